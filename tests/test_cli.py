"""The `armada` command line: help, exit codes, one-line errors naming the key/value/allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["embed", "train", "tune", "eval", "export", "serve-teacher", "demo", "ui"]


def armada(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "armada_ray.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_help_lists_the_eight_subcommands_and_each_has_its_own_help():
    out = armada("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout
    for name in SUBCOMMANDS:
        sub = armada(name, "--help")
        assert sub.returncode == 0 and "--config" in sub.stdout and "--json" in sub.stdout, name


def test_misspelled_key_exits_2_naming_the_right_key():
    out = armada("train", "--config", "jobs/demo.yaml", "loss.alpah=0.3")
    assert out.returncode == 2
    assert "loss.alpha" in out.stderr and "did you mean" in out.stderr and "Traceback" not in out.stderr


def test_unknown_task_exits_2_listing_known_tasks():
    out = armada("embed", "--config", "jobs/demo.yaml", "task.name=no_such_task")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "no_such_task" in line and "bbc_topics" in line and "boolq" in line


def test_out_of_range_value_and_stray_flag_exit_2():
    out = armada("train", "--config", "jobs/demo.yaml", "loss.alpha=1.5")
    assert out.returncode == 2 and "loss.alpha=1.5" in out.stderr and "less than or equal to 1" in out.stderr
    out = armada("train", "--config", "jobs/demo.yaml", "--alpha=3")
    assert out.returncode == 2


def test_tasks_lists_the_registry_as_json():
    out = armada("tasks", "--json")
    assert out.returncode == 0
    names = json.loads(out.stdout.strip().splitlines()[-1])["tasks"]
    assert {"bbc_topics", "tweet_sentiment", "rg_gsm_symbolic", "cola", "boolq", "gsm8k", "dolly"} <= set(names)


def test_library_chatter_stays_off_the_console_unless_verbose(monkeypatch):
    """Issue 16: Ray's internals and library warnings are kept off the console by default (`--verbose` shows them);
    Ray workers get the same choice through their environment."""
    from armada_ray import console
    from armada_ray.config import load_config
    from armada_ray.train.trainer import _worker_env

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    env = _worker_env(load_config(None, []))
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # Ray Train's print patch printed every worker line twice
    assert "ignore::FutureWarning" in env["PYTHONWARNINGS"] and env["TRANSFORMERS_VERBOSITY"] == "error"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    env = _worker_env(load_config(None, []))
    assert "PYTHONWARNINGS" not in env and env[console.VERBOSE_ENV] == "1" and console.tune_verbosity() == 1
    out = armada("tasks", "--verbose")
    assert out.returncode == 0 and "files" in out.stdout
