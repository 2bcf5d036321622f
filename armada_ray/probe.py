"""``armada probe``: the teacher's ceiling on a task before any GPU hour is spent.

A linear probe (scikit-learn logistic regression on standardised vectors; ridge regression for regression
tasks) fitted on the cached train vectors and scored on dev with the task's metric, beside the floor of a
constant prediction (the majority train class; the train mean for regression). A probe within
:data:`NO_SIGNAL_POINTS` of the floor means the teacher's vectors carry no usable task signal: distillation
from them cannot help, whatever the sweep does.

The probe function is plain numpy/scikit-learn; :func:`run_probe` (the CLI) reads the cache and logs to MLflow.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from armada_ray.cache import open_cache_for
from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.tasks import compute_metrics
from armada_ray.tracking import KIND_PROBE, RunTracker

NO_SIGNAL_POINTS = 2.0  # probe − floor, in points of the task metric (×100), below which we warn
MAX_PROBE_ROWS = 20000  # a seeded subsample above this: the probe is a ceiling estimate, not a model


def class_targets(spec: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows that carry a class, their labels): -1 marks the others (a generative answer outside the fixed
    set, a transfer-set row); regression targets are all kept."""
    keep = np.ones(len(labels), dtype=bool) if spec.kind == "regression" else labels >= 0
    return keep, labels[keep]


def score_predictions(spec: Any, preds: np.ndarray, refs: np.ndarray) -> float:
    """The task's primary metric; plain accuracy over the answer classes for generative tasks."""
    if spec.kind == "generative":
        return float((np.asarray(preds) == np.asarray(refs)).mean()) if len(refs) else math.nan
    cast = float if spec.kind == "regression" else int
    return float(compute_metrics(spec, [cast(p) for p in preds], [cast(r) for r in refs])[spec.metric])


def linear_probe(spec: Any, train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray,
                 seed: int = 0) -> dict[str, Any]:
    """Fit the probe on train, score it and the constant floor on dev. Returns probe, floor, gap (points)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if spec.kind == "generative" and not spec.choices:
        raise ConfigError(f"armada probe: task {spec.name!r} has open answers (no fixed answer set): a linear probe "
                          "needs classes or a regression target")
    keep_tr, y_tr = class_targets(spec, train_y)
    keep_dv, y_dv = class_targets(spec, dev_y)
    x_tr, x_dv = np.asarray(train_x, dtype=np.float32)[keep_tr], np.asarray(dev_x, dtype=np.float32)[keep_dv]
    if len(x_tr) > MAX_PROBE_ROWS:
        pick = np.random.default_rng(seed).choice(len(x_tr), MAX_PROBE_ROWS, replace=False)
        x_tr, y_tr = x_tr[pick], y_tr[pick]
    regression = spec.kind == "regression"
    t0 = time.perf_counter()
    if regression:
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        floor_pred = np.full(len(y_dv), float(np.mean(y_tr)))
    else:
        if len(np.unique(y_tr)) < 2:
            raise ConfigError(f"armada probe: task {spec.name!r}: the train split has fewer than 2 classes")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
        values, counts = np.unique(y_tr, return_counts=True)
        floor_pred = np.full(len(y_dv), values[np.argmax(counts)])
    model.fit(x_tr, y_tr)
    probe = score_predictions(spec, model.predict(x_dv), y_dv)
    floor = score_predictions(spec, floor_pred, y_dv)
    if math.isnan(floor):  # e.g. Pearson of a constant: no correlation at all
        floor = 0.0
    gap = 100.0 * (probe - floor)
    return {"probe_dev_metric": probe, "floor_dev_metric": floor, "probe_gap_points": gap,
            "metric": spec.metric if spec.kind != "generative" else "answer_class_accuracy",
            "train_rows": int(len(x_tr)), "dev_rows": int(len(x_dv)), "teacher_signal": gap >= NO_SIGNAL_POINTS,
            "fit_s": round(time.perf_counter() - t0, 3)}


def probe_line(result: dict[str, Any]) -> str:
    """One line for logs and the preflight: the probe beside the floor, with the no-signal warning."""
    line = (f"linear probe on the teacher vectors: dev {result['metric']} {result['probe_dev_metric']:.4f} "
            f"(majority/constant floor {result['floor_dev_metric']:.4f}, +{result['probe_gap_points']:.1f} points)")
    if not result["teacher_signal"]:
        line += (f"; warning: within {NO_SIGNAL_POINTS:g} points of the floor, the teacher carries no usable task "
                 "signal: distillation from it cannot help")
    return line


def probe_for_config(cfg: ArmadaConfig) -> dict[str, Any]:
    """The probe on this config's task and teacher cache (a ConfigError when vectors are missing)."""
    from armada_ray.train.data import build_splits  # lazy: loads torch; the probe itself is numpy

    spec, splits = build_splits(cfg, with_teacher=True, cache=open_cache_for(cfg))
    tr, dv = splits["train"], splits["dev"]
    return {"task": spec.name, **linear_probe(spec, tr.teacher, tr.labels, dv.teacher, dv.labels, seed=cfg.train.seed)}


def try_probe(cfg: ArmadaConfig) -> tuple[dict[str, Any] | None, str]:
    """(the probe or None, its one line) for diagnostics that must never stop what they accompany (the
    preflight, the demo): a task without a probe (e.g. open answers) gives None and the reason."""
    try:
        result = probe_for_config(cfg)
    except Exception as exc:  # noqa: BLE001 - a diagnostic, not a failed plan
        return None, "no linear probe (" + " ".join(str(exc).split())[:120] + ")"
    return result, probe_line(result)


def run_probe(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada probe``: print the probe and floor; log them as an MLflow run of kind ``probe``."""
    result = probe_for_config(cfg)
    print(f"[armada probe] task {result['task']} ({result['train_rows']} train / {result['dev_rows']} dev rows): "
          f"{probe_line(result)}", flush=True)
    if cfg.tracking.enabled:
        try:
            name = f"probe-{cfg.task.name}"
            tracker = RunTracker.start(cfg, run_name=name, kind=KIND_PROBE,
                                       local_dir=cfg.work_dir / "runs" / cfg.experiment / name)
            tracker.log_metrics({k: float(v) for k, v in result.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
            result["mlflow_run_id"] = tracker.run_id
            tracker.end("FINISHED")
        except Exception as exc:  # noqa: BLE001 - tracking never fails the probe
            print(f"[armada probe] warning: MLflow unavailable ({exc})", flush=True)
    return result
