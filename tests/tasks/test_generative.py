"""tasks/generative.py: GSM8K, SingleEq, WinoGrande and Dolly from their files."""

from __future__ import annotations

import json

import pytest
from _task_files import load, write_jsonl

from armada_ray.tasks import compute_metrics, example_prompt


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
