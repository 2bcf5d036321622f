"""MLflow tracking for armada-ray: runs, sweep trials as nested runs, artifacts, the registry, the UI.

Why our own thin layer rather than Ray's MLflow integration: under Ray Train V2 (the default in Ray
2.60) ``MLflowLoggerCallback`` on ``ray.train.RunConfig`` is rejected ("All callbacks must be instances
of ray.train.UserCallback"), and ``setup_mlflow`` / ``mlflow.set_experiment`` pass the tracking URI and
experiment through process-wide environment variables that Ray's helpers then prefer (NOTES.md). So
:class:`RunTracker` talks to one explicit ``MlflowClient`` with explicit experiment and run ids, and
this package never imports Ray: the training driver, a Train ``UserCallback`` or rank 0 calls it.

Layout (DESIGN §5): one experiment per config name; ``armada tune`` opens a parent run
(:func:`start_sweep_parent`, kind ``sweep``) and every trial is a child run (``parent_run_id=``) carrying the
same :func:`standard_tags`; a restarted trial reattaches to its run (``run_id=``, or its name under the same
parent) instead of opening a duplicate. With no ``tracking.uri`` the store is ``sqlite:///<work_dir>/mlflow.db``
with artifacts under ``<work_dir>/mlartifacts/<experiment>``, and ``armada ui`` (:func:`run_ui`) serves it on
127.0.0.1. Training never fails because of tracking: a store lost mid-run sends records to a local JSONL.

Modules: ``store`` (URIs, health check, client, experiments and runs), ``tags`` (run kinds, tag names,
:func:`standard_tags`), ``scrub`` (secrets dropped, names and values made valid), ``tracker``
(:class:`RunTracker` and its fallback), ``ui`` (the MLflow server and ``armada ui``).
"""

from armada_ray.tracking.store import TrackingFallbackWarning, TrackingUnavailable, check_tracking_store
from armada_ray.tracking.tags import (KIND_EMBED, KIND_EVAL, KIND_PROBE, KIND_REPORT, KIND_SWEEP, KIND_TRAIN,
                                      KIND_TRIAL, RUN_KINDS, standard_tags)
from armada_ray.tracking.tracker import RunTracker, start_sweep_parent
from armada_ray.tracking.ui import run_ui

__all__ = [
    "KIND_EMBED", "KIND_EVAL", "KIND_PROBE", "KIND_REPORT", "KIND_SWEEP", "KIND_TRAIN", "KIND_TRIAL", "RUN_KINDS",
    "RunTracker", "TrackingFallbackWarning", "TrackingUnavailable", "check_tracking_store", "run_ui",
    "standard_tags", "start_sweep_parent",
]
