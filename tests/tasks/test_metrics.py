"""tasks/metrics.py: classification, correlation and generative metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from armada_ray.tasks import Example, compute_metrics, get_task
from armada_ray.tasks import metrics as M


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
