"""The GLUE and SuperGLUE tasks (tasks/glue.py's specs read by tasks/sources.py): headerless and headed TSV, the
Hub copies, SuperGLUE JSONL; bad, repeated and missing rows and files."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from _task_files import again_same_split, load, write, write_jsonl

from armada_ray.config import ConfigError
from armada_ray.tasks import compute_metrics, example_prompt

COLA_TRAIN = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\tTrain Sentence Number {i}." for i in range(10)]
COLA_DEV = [f"cj99\t{i % 2}\t\tDev sentence {i}." for i in range(4)]


def test_cola_headerless_tsv_and_unlabelled_test(tmp_path):
    write(tmp_path / "train.tsv", COLA_TRAIN)
    write(tmp_path / "dev.tsv", COLA_DEV)
    write(tmp_path / "test.tsv", ["index\tsentence", "0\tAn unlabelled test sentence."])
    data = load("cola", tmp_path)
    assert data.skipped == []
    # the test file has no labels: the labelled dev file becomes test, dev is carved from train
    assert sorted(ex.uid for ex in data.test) == [f"cola:dev:{i}" for i in range(1, 5)]
    assert len(data.dev) == 1 and data.dev[0].uid.startswith("cola:train:")
    assert len(data.train) == 9 and all(ex.uid.startswith("cola:train:") for ex in data.train)
    assert any("no labels" in n for n in data.notes)
    first = next(ex for ex in data.train + data.dev if ex.uid == "cola:train:1")
    assert first.label == 0 and first.fields == {"sentence": "Train Sentence Number 0."}
    assert example_prompt(data.spec, first) == "train sentence number 0."
    assert again_same_split(data, load("cola", tmp_path))


def test_stsb_regression_tsv(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\tA man plays {i}.\tA man is playing {i}.\t{i * 0.5:.3f}"
            for i in range(11)]
    write(tmp_path / "train.tsv", [head, *rows[:8]])
    write(tmp_path / "dev.tsv", [head, *rows[8:]])
    data = load("stsb", tmp_path)
    assert data.spec.kind == "regression"
    assert sorted(ex.label for ex in data.test) == [4.0, 4.5, 5.0]
    assert all(isinstance(ex.label, float) for ex in data.train)
    assert data.train[0].fields.keys() == {"sentence1", "sentence2"}
    out = compute_metrics(data.spec, [ex.label for ex in data.test], data.test)
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)


def test_mnli_and_mrpc_use_the_glue_column_names(tmp_path):
    mnli = tmp_path / "mnli"
    head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    labels = ["entailment", "neutral", "contradiction"]
    write(mnli / "train.tsv", [head] + [f"{i}\tp\tq\tfiction\tPremise {i}\tHypo {i}\tx\t{labels[i % 3]}"
                                        for i in range(9)])
    write(mnli / "dev_matched.tsv", [head] + [f"{i}\tp\tq\tfiction\tP{i}\tH{i}\tx\t{labels[i % 3]}"
                                              for i in range(3)])
    data = load("mnli", mnli)
    assert sorted(ex.label for ex in data.test) == [0, 1, 2]
    assert data.test[0].fields.keys() == {"premise", "hypothesis"}
    mrpc = tmp_path / "mrpc"
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write(mrpc / "train.tsv", [head] + [f"{i % 2}\t1\t2\tFirst {i}\tSecond {i}" for i in range(6)])
    write(mrpc / "dev.tsv", [head, "1\t1\t2\tSame\tSame"])
    data = load("mrpc", mrpc)
    assert data.test[0].label == 1 and data.test[0].fields == {"sentence1": "Same", "sentence2": "Same"}


def test_bad_rows_are_skipped_and_reported(tmp_path, caplog):
    head = "index\tsentence1\tsentence2\tlabel"
    write(tmp_path / "train.tsv", [
        head,
        "0\tA.\tB.\tentailment",
        "1\tC.\tD.\tmaybe",  # line 3: unknown label
        "2\tE.",  # line 4: missing sentence2 (and label)
        "3\tG.\tH.\tnot_entailment",
        "4\t \tJ.\tentailment",  # line 6: empty sentence1
        "5\tK.\tL.\tnot_entailment",
    ])
    write(tmp_path / "dev.tsv", [head, "0\tX.\tY.\tentailment", "1\tZ.\tW.\tnot_entailment"])
    with caplog.at_level(logging.WARNING, logger="armada_ray.tasks"):
        data = load("rte", tmp_path)
    assert [(Path(s["file"]).name, s["row"], s["field"]) for s in data.skipped] == [
        ("train.tsv", 3, "label"), ("train.tsv", 4, "sentence2"), ("train.tsv", 6, "sentence1")]
    assert "unknown label 'maybe'" in data.skipped[0]["reason"]
    assert "entailment, not_entailment" in data.skipped[0]["reason"]
    assert len(data.train) + len(data.dev) == 3 and len(data.test) == 2
    assert "3 source rows skipped" in caplog.text
    # every one of them can be found: file, row, field and reason on a line each (issue 13)
    from armada_ray.tasks.base import write_skipped

    out = write_skipped(data, tmp_path / "work")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert out == tmp_path / "work" / "skipped" / "rte.jsonl" and len(rows) == 3
    assert rows[1]["row"] == 4 and rows[1]["field"] == "sentence2" and rows[1]["reason"]


def test_repeated_rows_in_local_files_are_kept_once_and_named(tmp_path):
    """Issue 13: duplicates in a task.data_dir file were kept and not reported (the packaged BBC task did)."""
    head = "index\tsentence1\tsentence2\tlabel"
    write(tmp_path / "train.tsv", [head, "0\tA.\tB.\tentailment", "1\tC.\tD.\tnot_entailment",
                                   "2\tA.\tB.\tentailment", "3\tE.\tF.\tentailment"])  # line 4 repeats line 2
    write(tmp_path / "dev.tsv", [head, "0\tC.\tD.\tnot_entailment", "1\tZ.\tW.\tentailment"])
    data = load("rte", tmp_path)
    dups = [(Path(s["file"]).name, s["row"]) for s in data.skipped if "duplicate" in s["reason"]]
    assert dups == [("train.tsv", 4)]  # across splits nothing is dropped: dev (here test) stays whole
    train = [(ex.fields["sentence1"], ex.fields["sentence2"]) for ex in data.train + data.dev]
    assert len(train) == len(set(train)) == 3 and len(data.test) == 2


def test_a_split_with_no_usable_row_is_a_config_error(tmp_path):
    head = "index\tsentence1\tsentence2\tlabel"
    write(tmp_path / "train.tsv", [head, "0\tA.\tB.\tentailment", "1\tC.\tD.\tnot_entailment"])
    write(tmp_path / "dev.tsv", [head, "0\tX.\tY.\tyes", "1\tZ.\tW.\tno"])
    with pytest.raises(ConfigError, match=r"all 2 rows of .*dev\.tsv are unusable"):
        load("rte", tmp_path)


def test_missing_data_file_error_names_the_file(tmp_path):
    write(tmp_path / "train.tsv", COLA_TRAIN)
    with pytest.raises(ConfigError) as err:
        load("cola", tmp_path)
    assert str(tmp_path / "dev.tsv") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no such folder"):
        load("cola", tmp_path / "nope")
    with pytest.raises(ConfigError, match=str(tmp_path / "train.jsonl")):
        load("gsm8k", tmp_path)


# ---------------------------------------------------------------------------------------- Hub copies


def fake_datasets(monkeypatch, result):
    def load_dataset(path, name=None):
        if isinstance(result, Exception):
            raise result
        return {split: types.SimpleNamespace(to_list=lambda rows=rows: [dict(r) for r in rows])
                for split, rows in result.items()}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_failure_says_to_set_data_dir(monkeypatch):
    fake_datasets(monkeypatch, ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)"))
    with pytest.raises(ConfigError) as err:
        load("rte")
    msg = str(err.value)
    assert "nyu-mll/glue:rte" in msg and "task.data_dir" in msg and "train.tsv" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="no Hugging Face Hub copy"):
        load("singleeq")


def test_hub_rows_map_class_ids_and_carve_the_unlabelled_test(monkeypatch):
    train = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i} for i in range(20)]
    dev = [{"sentence1": "c", "sentence2": "d", "label": 1, "idx": 0}]
    test = [{"sentence1": "e", "sentence2": "f", "label": -1, "idx": 0}]
    fake_datasets(monkeypatch, {"train": train, "validation": dev, "test": test})
    data = load("rte")
    assert [ex.uid for ex in data.test] == ["rte:dev:0"] and data.test[0].label == 1
    assert len(data.dev) == 1 and len(data.train) == 19
    assert data.skipped == []


# ---------------------------------------------------------------------------------------- SuperGLUE JSONL


def test_superglue_jsonl_boolq_cb_copa(tmp_path):
    boolq = tmp_path / "boolq"
    write_jsonl(boolq / "train.jsonl", [{"question": f"is it {i}", "passage": "P", "idx": i, "label": i % 2 == 0}
                                        for i in range(10)])
    write_jsonl(boolq / "val.jsonl", [{"question": "Is It", "passage": "Yes.", "idx": 0, "label": True}])
    write_jsonl(boolq / "test.jsonl", [{"question": "q", "passage": "p", "idx": 0}])
    data = load("boolq", boolq)
    assert data.test[0].label == 1 and data.spec.labels[1] == "True"
    assert example_prompt(data.spec, data.test[0]) == "is it yes."
    assert Counter(ex.label for ex in data.train + data.dev) == {0: 5, 1: 5}

    cb = tmp_path / "cb"
    labels = ["entailment", "contradiction", "neutral"]
    write_jsonl(cb / "train.jsonl", [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": labels[i % 3], "idx": i}
                                     for i in range(9)] + [{"premise": "x", "hypothesis": "y", "label": "unsure"}])
    write_jsonl(cb / "val.jsonl", [{"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}])
    data = load("cb", cb)
    assert data.test[0].label == 2
    assert [(s["row"], s["field"]) for s in data.skipped] == [(10, "label")]

    copa = tmp_path / "copa"
    write_jsonl(copa / "train.jsonl", [{"premise": f"The man fell {i}.", "choice1": "He slipped.",
                                        "choice2": "He sang.",
                                        "question": "cause", "label": i % 2, "idx": i} for i in range(6)])
    write(copa / "val.jsonl", ['{"premise": "A", "choice1": "B", "choice2": "C", "question": "effect", "label": 1}',
                               "{not json"])
    data = load("copa", copa)
    assert data.test[0].label == 1 and data.spec.labels == ["choice1", "choice2"]
    assert data.skipped[0]["row"] == 2 and data.skipped[0]["reason"].startswith("invalid JSON")
    assert example_prompt(data.spec, data.test[0]) == "a effect b c"
