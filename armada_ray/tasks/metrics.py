"""Task metrics, each a function ``(preds, refs) -> float`` on the 0-1 scale.

Classification metrics come from scikit-learn, correlations from SciPy and ROUGE-L from the
``rouge-score`` package (Google's reference implementation, with its Porter stemmer). Only the answer
extraction for generative tasks is ours: numeric exact match compares the *last number* in each text
(commas as thousands separators allowed), and exact match compares normalised text.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Sequence

# an optional minus (not a hyphen inside a word or range), then 1,234.5 / 1234.5 / .5
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


def last_number(text: str) -> float | None:
    """The last number in ``text`` (``"... #### 1,234"`` -> 1234.0), or None if there is none."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding whitespace and trailing punctuation."""
    return " ".join(str(text).lower().split()).strip(" .!?,;:\"'")


def _check(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ValueError("no references to score")


def accuracy(preds: Sequence[int], refs: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    _check(preds, refs)
    return float(accuracy_score(refs, preds))


def f1(preds: Sequence[int], refs: Sequence[int]) -> float:
    """Binary F1 of class 1 (MRPC, QQP)."""
    from sklearn.metrics import f1_score

    _check(preds, refs)
    return float(f1_score(refs, preds, average="binary", pos_label=1, zero_division=0))


def macro_f1(preds: Sequence[int], refs: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes present in preds or refs (CB)."""
    from sklearn.metrics import f1_score

    _check(preds, refs)
    return float(f1_score(refs, preds, average="macro", zero_division=0))


def mcc(preds: Sequence[int], refs: Sequence[int]) -> float:
    """Matthews correlation (CoLA); 0.0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef

    _check(preds, refs)
    return float(matthews_corrcoef(refs, preds))


def _correlation(fn: Callable[..., Any], preds: Sequence[float], refs: Sequence[float]) -> float:
    _check(preds, refs)
    if len(refs) < 2 or len(set(map(float, preds))) < 2 or len(set(map(float, refs))) < 2:
        return float("nan")  # undefined for constant input (scipy warns and returns nan)
    return float(fn(list(map(float, preds)), list(map(float, refs)))[0])


def pearson(preds: Sequence[float], refs: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, preds, refs)


def spearman(preds: Sequence[float], refs: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, preds, refs)


def numeric_exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions whose last number equals the reference's last number (|diff| <= 1e-6);
    a reference without a number falls back to normalised text equality."""
    _check(preds, refs)
    hits = 0
    for pred, ref in zip(preds, refs):
        want = last_number(ref)
        if want is None:
            hits += normalize_text(pred) == normalize_text(ref)
            continue
        got = last_number(pred)
        hits += got is not None and math.isclose(got, want, rel_tol=0.0, abs_tol=1e-6)
    return hits / len(refs)


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions equal to the reference after :func:`normalize_text`."""
    _check(preds, refs)
    return sum(normalize_text(p) == normalize_text(r) for p, r in zip(preds, refs)) / len(refs)


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, Porter stemming; its tokenizer keeps only [a-z0-9] words)."""
    _check(preds, refs)
    scorer = _rouge_scorer()
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(refs)


def extract_choice(text: str, choices: Sequence[str]) -> str:
    """The choice a free-text answer names: the whole answer if it is a choice, else the choice mentioned
    last (``"the answer is option2"`` -> ``option2``); the text unchanged if it names none."""
    norm = normalize_text(text)
    by_norm = {normalize_text(c): c for c in choices}
    if norm in by_norm:
        return by_norm[norm]
    best, best_pos = None, -1
    for key, choice in by_norm.items():
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", norm):
            if m.start() > best_pos:
                best, best_pos = choice, m.start()
    return best if best is not None else text


METRICS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "numeric_em": numeric_exact_match,
    "exact_match": exact_match,
    "rouge_l": rouge_l,
}


def compute_metrics(spec: Any, preds: Sequence[Any], refs: Sequence[Any]) -> dict[str, float]:
    """Every metric of ``spec`` (primary first) for ``preds`` against ``refs``.

    Classification: class indices (ints); regression: floats; generative: texts. ``refs`` may also be the
    :class:`~armada_ray.tasks.base.Example` rows themselves. For a generative task with ``spec.choices``,
    each prediction is first reduced to the choice it names (:func:`extract_choice`).
    """
    refs = [_ref_value(spec, r) for r in refs]
    preds = list(preds)
    if spec.kind == "classification":
        preds, refs = [int(p) for p in preds], [int(r) for r in refs]
    elif spec.kind == "regression":
        preds, refs = [float(p) for p in preds], [float(r) for r in refs]
    else:
        preds, refs = [str(p) for p in preds], [str(r) for r in refs]
        if spec.choices:
            preds = [extract_choice(p, spec.choices) for p in preds]
    return {name: METRICS[name](preds, refs) for name in spec.metrics}


def _ref_value(spec: Any, ref: Any) -> Any:
    if hasattr(ref, "uid") and hasattr(ref, "fields"):  # an Example
        return ref.answer if spec.kind == "generative" else ref.label
    return ref
