"""`task.name=files`: your own JSONL/CSV/TSV/Parquet in one config block (issue 16), on files the tests write.

Every bad input gets an answer naming file, row and field: a skipped row when the rest is usable, a
ConfigError (exit 2 from the CLI) when nothing usable remains. The slow test distils on a JSONL file end to
end through the CLI (embed with a real local teacher, then Ray Train + DeepSpeed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import ROOT

from armada_ray.config import ConfigError, load_config
from armada_ray.tasks import load_task, task_spec

WORDS = {"pos": ["great", "lovely", "superb", "wonderful", "fine"], "neg": ["awful", "bad", "dreadful", "poor", "grim"]}


def _rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        label = "pos" if i % 2 else "neg"
        out.append({"text": f"review {i}: a {WORDS[label][i % 5]} film, truly {WORDS[label][(i + 2) % 5]}",
                    "label": label})
    return out


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _cfg(*overrides: str):
    return load_config(None, ["task.name=files", "task.text_fields=[text]", *overrides])


def test_jsonl_with_a_carved_dev_and_test_and_inferred_labels(tmp_path):
    _jsonl(tmp_path / "train.jsonl", _rows(60))
    data = load_task(_cfg(f"task.files={{train: {tmp_path}/train.jsonl}}").task)
    assert data.spec.labels == ["neg", "pos"] and data.spec.metric == "accuracy"
    assert sum(data.sizes().values()) == 60 and min(data.sizes().values()) >= 1  # 70/10/20 with task.seed
    assert any("inferred from train" in n for n in data.notes)
    assert data.train[0].fields["text"].startswith("review ")


def test_csv_tsv_parquet_and_globs_give_the_same_examples(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(40)
    with open(tmp_path / "train-a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows[:20])
    with open(tmp_path / "train-b.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows[20:])
    pq.write_table(pa.Table.from_pylist(_rows(10, 100)), tmp_path / "dev.parquet")
    _jsonl(tmp_path / "test.jsonl", _rows(10, 200))
    cfg = _cfg(f"task.files={{train: '{tmp_path}/train-*', dev: {tmp_path}/dev.parquet, test: {tmp_path}/test.jsonl}}")
    data = load_task(cfg.task)
    assert data.sizes() == {"train": 40, "dev": 10, "test": 10}
    assert {ex.uid.split(":")[2] for ex in data.train} == {"train-a.csv", "train-b.tsv"}
    assert not data.skipped


def test_integer_labels_index_task_labels_and_the_mapping_travels_with_the_spec(tmp_path):
    _jsonl(tmp_path / "t.jsonl", [{"text": r["text"], "label": int(r["label"] == "pos")} for r in _rows(30)])
    cfg = _cfg(f"task.files={{train: {tmp_path}/t.jsonl}}", "task.labels=[negative, positive]")
    data = load_task(cfg.task)
    assert data.spec.labels == ["negative", "positive"]
    assert {ex.label for ex in data.train} == {0, 1}
    assert task_spec(cfg.task).labels == ["negative", "positive"]


def test_bad_rows_are_skipped_with_file_row_field_and_reason(tmp_path):
    good = _rows(30)
    bad = [json.dumps({"label": "pos"}),                        # line 31: missing text column
           json.dumps({"text": "a film", "label": "meh"}),      # 32: label outside task.labels
           "{not json",                                          # 33
           json.dumps({"text": "another film", "label": 3}),    # 34: a number in a column of strings
           json.dumps(good[0])]                                  # 35: duplicate of row 1
    path = _jsonl(tmp_path / "train.jsonl", [*good, *bad])
    with open(path, "ab") as f:
        f.write(b'{"text": "caf\xe9 film", "label": "pos"}\n')  # 36: not UTF-8
    data = load_task(_cfg(f"task.files={{train: {path}}}", "task.labels=[neg, pos]").task)
    got = {s["row"]: s for s in data.skipped}
    assert set(got) == {31, 32, 33, 34, 35, 36}
    assert all(s["file"] == str(path) for s in data.skipped)
    assert got[31]["field"] == "text" and got[31]["reason"] == "missing"
    assert got[32]["field"] == "label" and "unknown label 'meh'" in got[32]["reason"]
    assert "invalid JSON" in got[33]["reason"] and "UTF-8" in got[36]["reason"].replace("utf-8", "UTF-8")
    assert got[34]["field"] == "label" and "column of str" in got[34]["reason"]
    assert "duplicate" in got[35]["reason"]
    assert sum(data.sizes().values()) == 30


def test_csv_rows_naming_bad_bytes_and_missing_cells(tmp_path):
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, ["text", "label"], lineterminator="\n")
    w.writeheader()
    w.writerows(_rows(20))
    path = tmp_path / "train.csv"
    path.write_bytes(buf.getvalue().encode() + b"bad \xff byte,pos\nonly one cell\n")
    data = load_task(_cfg(f"task.files={{train: {path}}}").task)
    got = {s["row"]: s for s in data.skipped}
    assert "UTF-8" in got[22]["reason"] and got[23]["field"] == "label"


@pytest.mark.parametrize("setup,needle", [
    (lambda d: _jsonl(d / "t.jsonl", [{"body": r["text"], "label": r["label"]} for r in _rows(10)]),
     r"all 10 rows of .*t\.jsonl are unusable \(first: row 1, field 'text': missing\)"),
    (lambda d: (d / "t.jsonl").write_text(""), r"t\.jsonl has no rows"),
    (lambda d: _jsonl(d / "t.jsonl", [{"text": "x", "label": "one"}, {"text": "y", "label": "one"}]),
     r"task.label_field='label': .* holds one label value 'one'"),
    (lambda d: (d / "t.jsonl").write_bytes(b"PAR1\x00garbage"), None),
])
def test_nothing_usable_is_a_config_error_naming_the_place(tmp_path, setup, needle):
    setup(tmp_path)
    if needle is None:  # a binary file named .parquet
        os.rename(tmp_path / "t.jsonl", tmp_path / "t.parquet")
        needle = r"t\.parquet: not a readable Parquet file"
        target = tmp_path / "t.parquet"
    else:
        target = tmp_path / "t.jsonl"
    with pytest.raises(ConfigError, match=needle):
        load_task(_cfg(f"task.files={{train: {target}}}").task)


def test_config_mistakes_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_task(_cfg(f"task.files={{train: {tmp_path}/nope.jsonl}}").task)
    with pytest.raises(ConfigError, match="no file matches"):
        load_task(_cfg(f"task.files={{train: '{tmp_path}/*.jsonl'}}").task)
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ConfigError, match="allowed suffixes"):
        load_task(_cfg(f"task.files={{train: {tmp_path}/t.xlsx}}").task)
    with pytest.raises(ConfigError, match="task.text_fields"):
        load_config(None, ["task.name=files", f"task.files={{train: {tmp_path}/t.jsonl}}"])
    with pytest.raises(ConfigError, match="only read with task.name=files"):
        load_config(None, ["task.text_fields=[text]"])
    with pytest.raises(ConfigError, match="answer_field"):
        _cfg(f"task.files={{train: {tmp_path}/t.jsonl}}", "task.kind=generative")


def test_relative_paths_are_made_absolute_on_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg("task.files={train: data/train.jsonl}")
    assert cfg.task.files["train"] == str(tmp_path / "data" / "train.jsonl")


def test_unlabelled_rows_feed_the_transfer_set(tmp_path):
    rows = _rows(40) + [{"text": f"unlabelled review {i}, quite a film"} for i in range(12)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    data = load_task(_cfg(f"task.files={{train: {path}}}", "task.transfer_rows=10").task)
    assert len(data.transfer) == 10 and all(ex.uid.startswith("files:transfer:") for ex in data.transfer)
    assert not data.skipped and sum(len(data.split(s)) for s in ("train", "dev", "test")) == 40
    without = load_task(_cfg(f"task.files={{train: {path}}}").task)  # no transfer set: they are skipped, named
    assert len(without.skipped) == 12 and {s["reason"] for s in without.skipped} == {"missing label"}


def test_regression_and_generative_file_tasks(tmp_path):
    _jsonl(tmp_path / "r.jsonl", [{"text": f"item {i}", "score": i / 10} for i in range(30)])
    data = load_task(_cfg(f"task.files={{train: {tmp_path}/r.jsonl}}", "task.kind=regression",
                          "task.label_field=score").task)
    assert data.spec.kind == "regression" and data.spec.metric == "pearson"
    assert isinstance(data.train[0].label, float)
    _jsonl(tmp_path / "g.jsonl", [{"q": f"what is {i} plus 1?", "a": str(i + 1)} for i in range(30)])
    data = load_task(load_config(None, ["task.name=files", f"task.files={{train: {tmp_path}/g.jsonl}}",
                                        "task.text_fields=[q]", "task.kind=generative", "task.answer_field=a",
                                        "task.metric=numeric_em"]).task)
    assert data.spec.kind == "generative" and data.train[0].answer.isdigit()


def test_a_hub_dataset_with_the_same_column_mapping(tmp_path):
    """task.hub through the real `datasets.load_dataset`, on a dataset folder in the Hub's Parquet layout written
    here (no network: the same call a cluster makes with an id like owner/name). The label column's ClassLabel
    names become task.labels; its missing validation split is carved from train."""
    import datasets

    feats = datasets.Features({"review": datasets.Value("string"), "stars": datasets.ClassLabel(names=["neg", "pos"])})
    def split(rows: list[dict]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"review": [r["text"] for r in rows],
                                           "stars": [int(r["label"] == "pos") for r in rows]}, features=feats)
    (tmp_path / "ds" / "data").mkdir(parents=True)
    split(_rows(40)).to_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    split(_rows(12, offset=100)).to_parquet(tmp_path / "ds" / "data" / "test-00000-of-00001.parquet")
    cfg = load_config(None, ["task.name=files", "task.text_fields=[review]", "task.label_field=stars",
                             f"task.hub={{path: {tmp_path / 'ds'}}}"])
    data = load_task(cfg.task)
    assert data.spec.labels == ["neg", "pos"]
    assert len(data.test) == 12 and len(data.train) + len(data.dev) == 40 and len(data.dev) >= 1
    ex = data.test[0]
    assert ex.fields["review"].startswith("review 100") and data.spec.labels[ex.label] == "neg"
    with pytest.raises(ConfigError, match=r"task.hub.splits.train='training': the dataset has splits"):
        load_task(load_config(None, ["task.name=files", "task.text_fields=[review]", "task.label_field=stars",
                                     f"task.hub={{path: {tmp_path / 'ds'}, splits: {{train: training}}}}"]).task)


def test_armada_tasks_lists_the_file_task():
    out = subprocess.run([sys.executable, "-m", "armada_ray.cli", "tasks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "\nfiles " in out.stdout and "task.files" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distil_on_my_own_jsonl_with_one_config_block(tmp_path):
    """A user's JSONL + one `task:` block: armada embed, then armada train, from the CLI (exit 0 both)."""
    _jsonl(tmp_path / "reviews.jsonl", _rows(48))
    (tmp_path / "my.yaml").write_text(f"""
name: my-reviews
paths: {{work_dir: {tmp_path}/runs}}
teacher: {{kind: hf, model: minilm, stand_in: true}}
task:
  name: files
  files: {{train: reviews.jsonl}}
  text_fields: [text]
  label_field: label
student: {{model: tiny-llama, max_length: 32, lora: {{layers_to_transform: null}}}}
aligner: {{hidden: 32, proj_dim: 16}}
train: {{epochs: 1, batch_size: 8}}
scaling: {{cpus_per_worker: 0.9}}
tracking: {{enabled: false}}
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    for cmd in ("embed", "train"):
        out = subprocess.run([sys.executable, "-m", "armada_ray.cli", cmd, "--config", "my.yaml", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["best_dev_metric"] is not None
    task = json.loads((Path(result["best_checkpoint"]) / "task.json").read_text())
    assert task["task"] == "files" and task["labels"] == ["neg", "pos"]  # the mapping is saved with the run
