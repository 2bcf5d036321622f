"""The `armada` command line: help, exit codes, one-line errors naming the key/value/allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _paths import ROOT

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


def test_unknown_student_model_exits_2_at_once_before_ray(tmp_path):
    """Issue 13: `student.model=no-such-model` retried the hub for ~29 s, then an OSError traceback. Now one
    short request (here to a hub that refuses the connection) and a one-line error before the plan and Ray."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)  # conftest sets both: here the hub is tried, and refuses the connection
    env.pop("TRANSFORMERS_OFFLINE", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "armada_ray.cli", "train", "--config", "jobs/demo.yaml",
                          "student.model=no-such-model", f"paths.work_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    took = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("student.model='no-such-model': cannot reach the Hugging Face Hub") and "minilm" in line
    assert "ConnectError" in line
    assert "Traceback" not in out.stderr and "Retrying" not in out.stderr
    assert "[armada] plan:" not in out.stdout and not (tmp_path / "runs").exists()  # refused before the run and Ray
    assert took < 30, took  # python + torch imports included; the hub check itself is one refused connection


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
    from armada_ray.train.env import worker_env

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    env = worker_env(load_config(None, []))
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # Ray Train's print patch printed every worker line twice
    assert "ignore::FutureWarning" in env["PYTHONWARNINGS"] and env["TRANSFORMERS_VERBOSITY"] == "error"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    env = worker_env(load_config(None, []))
    assert "PYTHONWARNINGS" not in env and env[console.VERBOSE_ENV] == "1" and console.tune_verbosity() == 1
    out = armada("tasks", "--verbose")
    assert out.returncode == 0 and "files" in out.stdout


def test_ray_data_notices_and_ray_internal_lines_are_kept_off_the_console_but_ours_are_not_merged(tmp_path):
    """Issue 16, on the real libraries in a fresh interpreter (both read their settings at import): Ray Data's
    INFO notices go to its log file only; Ray's log forwarding skips the two known C++/raylet notices and
    DeepSpeed's start-up print, and never merges two trials' "[armada ...]" lines into one "[repeated 2x]"."""
    from armada_ray import console

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import logging, json\n"
        "from armada_ray import console\n"
        "console.quiet_driver()\n"
        "import ray.data  # noqa: F401 - configures the 'ray.data' logger from RAY_DATA_LOGGING_CONFIG\n"
        "from ray._private.ray_logging import stdout_deduplicator as d\n"
        "h = {x.name: logging.getLevelName(x.level) for x in logging.getLogger('ray.data').handlers}\n"
        "lines = ['[armada trial-1 rank 0] epoch 1/2 done', '[armada trial-2 rank 0] epoch 1/2 done',\n"
        "         '[2026 E 1 2] core_worker.cc:2465: Actor with class name: X has constructor arguments in the '\n"
        "         'object store and max_restarts > 0.', 'DeepSpeed deepspeed.ops.comm.shm_op built successfully',\n"
        "         'WARNING: 8 PYTHON worker processes have been started on node: n with address: a']\n"
        "out = [line for i, l in enumerate(lines) for b in d.deduplicate({'ip': 'x', 'pid': i, 'lines': [l]})\n"
        "       for line in b['lines']]\n"
        "print(json.dumps({'handlers': h, 'out': out}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_DEDUP", "RAY_DATA_LOGGING", "ARMADA_VERB"))}
    got = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    res = json.loads(got.stdout.strip().splitlines()[-1])
    assert res["handlers"]["console"] == "WARNING" and res["handlers"]["file"] in ("NOTSET", "DEBUG")
    assert res["out"] == ["[armada trial-1 rank 0] epoch 1/2 done", "[armada trial-2 rank 0] epoch 1/2 done"]
    assert console.RAY_DATA_LOGGING.is_file()
