"""RunTracker: one MLflow run whose logging never fails training, and the parent run of a sweep.

:meth:`RunTracker.start` opens (or reattaches to) a run and raises :class:`TrackingUnavailable` when the store
cannot be reached then. If it goes away mid-run, every logging call catches the error, appends the record to
``<local_dir>/tracking_fallback.jsonl``, warns once and tries the store again after ``RETRY_AFTER_S``.
``RunTracker.disabled()`` (``tracking.enabled=false``) has the same API and writes only that local file.
A record the store answered and refused (a bad name, a changed parameter) is written there too, with a warning,
but does not mark the store as down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from armada_ray.config import ArmadaConfig, dump_config, flatten, redact_url_credentials
from armada_ray.tracking.scrub import (MAX_DIGEST_CHARS, clean_key, metric_value, one_line, param_value,
                                       scrub_params, tag_value)
from armada_ray.tracking.store import (TrackingFallbackWarning, TrackingUnavailable, artifact_root,
                                       check_tracking_store, client_for, ensure_experiment, open_run, unavailable)
from armada_ray.tracking.tags import KIND_SWEEP, MLFLOW_NOTE_TAG, RUN_KINDS, TAG_KIND, standard_tags
from armada_ray.tracking.ui import ui_url

if TYPE_CHECKING:  # mlflow, pandas and matplotlib are imported where used: a disabled tracker needs none of them
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from armada_ray.cache import DatasetView

log = logging.getLogger(__name__)

FALLBACK_FILE = "tracking_fallback.jsonl"
RETRY_AFTER_S = 30.0
EXPORT_ARTIFACT_PATH = "export"
CACHE_CONTEXT = "teacher_cache"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow error codes that mean "the store answered and refused this record", not "the store is gone".
_REJECTED_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


def _is_rejection(exc: BaseException) -> bool:
    """True when the store answered and refused the record (bad name, changed param): not an outage."""
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in _REJECTED_CODES


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunTracker:
    """One MLflow run (or, disabled, only the local JSONL), with logging that never raises.

    Build it with :meth:`start` (or :meth:`disabled`); every ``log_*`` method swallows store failures
    (see the module docstring). Usable as a context manager: the run ends FINISHED, FAILED on an
    exception, KILLED on Ctrl-C.
    """

    def __init__(
        self,
        *,
        uri: str | None,
        experiment_id: str | None,
        run_id: str | None,
        run_name: str | None,
        kind: str | None,
        local_dir: Path | None,
    ):
        self._uri = uri
        self._experiment_id = experiment_id
        self._run_id = run_id
        self._run_name = run_name
        self._kind = kind
        self._local_dir = local_dir
        self._client_obj: MlflowClient | None = None
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._warned: set[str] = set()
        self._ended = False

    # ---- construction

    @classmethod
    def start(
        cls,
        cfg: ArmadaConfig,
        run_name: str,
        kind: str,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
    ) -> RunTracker:
        """Open (or reattach to) the run ``run_name`` in experiment ``cfg.experiment``.

        ``kind``: what the run is (a ``KIND_*`` name of :mod:`armada_ray.tracking.tags`), tagged ``armada.kind``.
        ``parent_run_id``: make it a child run (a sweep trial). ``run_id``: reattach to that run (a resumed
        trial keeps its run). Without ``run_id``, a child whose name already exists under the same parent
        is reattached too, so a restarted trial never duplicates its run. ``tags`` are added to
        :func:`standard_tags` (pass ``standard_tags(cfg, fingerprint_id)`` to tag the teacher cache).
        ``local_dir`` holds the JSONL fallback (default ``cfg.run_dir``).
        Returns :meth:`disabled` when ``tracking.enabled`` is false; raises :class:`TrackingUnavailable`
        when the store cannot be reached.
        """
        if kind not in RUN_KINDS:  # one vocabulary: the UI filters on armada.kind
            raise ValueError(f"run kind {kind!r} is not one of {', '.join(RUN_KINDS)}")
        local = Path(local_dir) if local_dir is not None else cfg.run_dir
        if not cfg.tracking.enabled:
            return cls.disabled(cfg, local_dir=local, run_name=run_name, kind=kind)
        uri = cfg.tracking_uri
        check_tracking_store(uri)
        all_tags = {**standard_tags(cfg, None), TAG_KIND: kind}
        all_tags.update({k: v for k, v in (tags or {}).items() if v is not None})
        try:
            client = client_for(uri)
            experiment_id = ensure_experiment(client, cfg.experiment, artifact_root(cfg))
            run = open_run(client, experiment_id, run_name, parent_run_id, run_id, all_tags)
        except Exception as exc:
            if getattr(exc, "error_code", None) in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
                raise  # a bad run/parent id or name: the caller's bug, not the store's state
            raise unavailable(uri, one_line(exc)) from exc
        tracker = cls(
            uri=uri,
            experiment_id=run.info.experiment_id,
            run_id=run.info.run_id,
            run_name=run.info.run_name,
            kind=kind,
            local_dir=local,
        )
        tracker._client_obj = client
        return tracker

    @classmethod
    def disabled(
        cls,
        cfg: ArmadaConfig | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        run_name: str | None = None,
        kind: str | None = None,
    ) -> RunTracker:
        """A tracker with the same API that talks to no store; records go to the local JSONL only
        (to ``local_dir``, else ``cfg.run_dir``; nowhere when neither is given)."""
        local = Path(local_dir) if local_dir is not None else (cfg.run_dir if cfg is not None else None)
        tracker = cls(uri=None, experiment_id=None, run_id=None, run_name=run_name, kind=kind, local_dir=local)
        tracker._record("start", {"kind": kind, "tracking": "disabled"})
        return tracker

    # ---- properties

    @property
    def enabled(self) -> bool:
        return self._uri is not None

    @property
    def degraded(self) -> bool:
        """True while the store is failing and records go to the JSONL fallback."""
        return self._down_since is not None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def run_name(self) -> str | None:
        return self._run_name

    @property
    def kind(self) -> str | None:
        return self._kind

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def tracking_uri(self) -> str | None:
        return self._uri

    @property
    def url(self) -> str | None:
        """The MLflow UI page of this run (for a local store: what ``armada ui`` serves)."""
        if self._uri is None or self._run_id is None:
            return None
        return ui_url(self._uri, self._experiment_id, self._run_id)

    @property
    def fallback_path(self) -> Path | None:
        return self._local_dir / FALLBACK_FILE if self._local_dir is not None else None

    # ---- logging

    def log_params(self, params: Mapping[str, Any] | ArmadaConfig) -> None:
        """Log flattened parameters (a config or a possibly nested dict), secrets dropped, values truncated."""
        flat = flatten(params) if not isinstance(params, Mapping) else flatten(dict(params))
        kept, dropped = scrub_params(flat)
        if dropped:
            log.info("not logging %d secret-looking parameter(s): %s", len(dropped), ", ".join(sorted(dropped)))
        values = {clean_key(k): param_value(v) for k, v in kept.items()}
        self._guarded("params", {"params": values}, lambda: self._send_params(values))

    def log_config(self, cfg: ArmadaConfig) -> None:
        """The flattened config as params and the resolved ``config.yaml`` as an artifact."""
        self.log_params(cfg)
        text = dump_config(cfg)

        def send() -> None:
            with tempfile.TemporaryDirectory(prefix="armada-config-") as tmp:
                path = Path(tmp) / "config.yaml"
                path.write_text(text)
                self._client.log_artifact(self._run_id, str(path))

        self._guarded("config", {"config_yaml": text}, send)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (non-numeric values are skipped; names are made valid)."""
        values: dict[str, float] = {}
        for key, value in metrics.items():
            number = metric_value(value)
            if number is not None:
                values[clean_key(key)] = number
        if not values:
            return
        step_i = int(step) if step is not None else 0

        def send() -> None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            self._client.log_batch(self._run_id, metrics=[Metric(k, v, ts, step_i) for k, v in values.items()])

        payload = {"metrics": {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}, "step": step_i}
        self._guarded("metrics", payload, send)

    def set_description(self, markdown: str) -> None:
        """The run's description in the MLflow UI (the ``mlflow.note.content`` tag, rendered as markdown)."""
        self.set_tags({MLFLOW_NOTE_TAG: markdown})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {clean_key(k): tag_value(v) for k, v in tags.items() if v is not None}

        def send() -> None:
            from mlflow.entities import RunTag

            self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in values.items()])

        self._guarded("tags", {"tags": values}, send)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file or a whole folder (under ``artifact_path`` in the run's artifacts)."""
        src = Path(path)
        payload = {"path": str(src.resolve()), "artifact_path": artifact_path}
        if not src.exists():
            self._reject("artifact", payload, FileNotFoundError(f"no such file or folder: {src}"))
            return

        def send() -> None:
            if src.is_dir():
                self._client.log_artifacts(self._run_id, str(src), artifact_path)
            else:
                self._client.log_artifact(self._run_id, str(src), artifact_path)

        self._guarded("artifact", payload, send)

    def log_figure(self, fig: Figure, filename: str) -> None:
        """Save a matplotlib figure as the artifact ``filename`` (``plots/loss.png``; ``.png`` when no suffix)."""
        name = filename if Path(filename).suffix else f"{filename}.png"
        if self.enabled and not self._store_down():
            try:
                self._client.log_figure(self._run_id, fig, name)
                return
            except Exception as exc:  # noqa: BLE001 - tracking never fails training
                failure: BaseException | None = exc
        else:
            failure = None
        local = self._save_figure_locally(fig, name)
        payload = {"artifact_file": name, "path": str(local) if local else None}
        if failure is None:
            self._record("figure", payload)
        else:
            self._failed("figure", payload, failure)

    def log_cache_dataset(self, view: DatasetView) -> None:
        """Record the teacher cache as the run's dataset input (context ``teacher_cache``) plus its manifest.

        ``view`` is what the cache says it is (``TeacherCache.dataset_view()``): a name, a digest, a row per shard.
        """
        payload = {"manifest": str(view.manifest.resolve()), "name": view.name}

        def send() -> None:
            import mlflow.data
            import pandas as pd
            from mlflow.entities import DatasetInput, InputTag

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways", int columns
                dataset = mlflow.data.from_pandas(
                    pd.DataFrame(list(view.rows)), source=str(view.source), name=view.name,
                    digest=view.digest[:MAX_DIGEST_CHARS],
                )
                entity = dataset._to_mlflow_entity()
            self._client.log_inputs(
                self._run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", CACHE_CONTEXT)])]
            )
            self._client.log_artifact(self._run_id, str(view.manifest), CACHE_CONTEXT)

        self._guarded("dataset", payload, send)

    def register_model(self, model_dir: str | os.PathLike[str], name: str) -> int | None:
        """Upload the export folder as the run's ``export/`` artifacts and register it as a new version of
        model ``name``; returns the version (None when tracking is off or failed)."""
        src = Path(model_dir)
        payload = {"model_dir": str(src.resolve()), "name": name}
        if not src.is_dir():
            self._reject("register_model", payload, FileNotFoundError(f"no such export folder: {src}"))
            return None

        def send() -> int:
            from mlflow.exceptions import MlflowException

            client = self._client
            client.log_artifacts(self._run_id, str(src), EXPORT_ARTIFACT_PATH)
            try:
                client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            run = client.get_run(self._run_id)
            source = f"{run.info.artifact_uri.rstrip('/')}/{EXPORT_ARTIFACT_PATH}"
            tags = {k: v for k, v in run.data.tags.items() if k.startswith("armada.")}
            version = client.create_model_version(name, source=source, run_id=self._run_id, tags=tags)
            return int(version.version)

        return self._guarded("register_model", payload, send)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED (a second call does nothing)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        if self._ended:
            return
        self._ended = True
        self._guarded("end", {"status": status}, lambda: self._client.set_terminated(self._run_id, status))

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else ("degraded" if self.degraded else "live")
        return f"RunTracker({self._run_name!r}, run_id={self._run_id}, {state})"

    # pickling (a tracker handed to a Ray callback): the client and lock are rebuilt on the other side
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client_obj"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- internals

    @property
    def _client(self) -> MlflowClient:
        if self._client_obj is None:
            assert self._uri is not None
            self._client_obj = client_for(self._uri)
        return self._client_obj

    def _send_params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_batch(self._run_id, params=[Param(k, v) for k, v in values.items()])
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            # A reattached run whose config changed: MLflow refuses to change a logged value. Keep the
            # old values, log the new keys, and say which ones differ.
            logged = self._client.get_run(self._run_id).data.params
            changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
            fresh = [Param(k, v) for k, v in values.items() if k not in logged]
            if fresh:
                self._client.log_batch(self._run_id, params=fresh)
            if changed:
                self._warn_once(
                    "params-changed",
                    f"run {self._run_id}: parameters already logged with other values were kept: "
                    + ", ".join(changed[:20]),
                )
                self._record("params_not_logged", {"params": {k: values[k] for k in changed}})

    def _store_down(self) -> bool:
        """While degraded, True until RETRY_AFTER_S has passed and a quick probe succeeds."""
        if self._down_since is None:
            return False
        if time.monotonic() - self._down_since < RETRY_AFTER_S:
            return True
        try:
            check_tracking_store(self._uri or "")
        except TrackingUnavailable:
            self._down_since = time.monotonic()
            return True
        self._down_since = None
        log.warning("MLflow tracking store %s is reachable again; logging there resumes", self._uri)
        return False

    def _guarded(self, op: str, payload: dict[str, Any], send: Callable[[], Any]) -> Any:
        if not self.enabled or self._store_down():
            self._record(op, payload)
            return None
        try:
            return send()
        except Exception as exc:  # noqa: BLE001 - tracking never fails training
            self._failed(op, payload, exc)
            return None

    def _failed(self, op: str, payload: dict[str, Any], exc: BaseException) -> None:
        if _is_rejection(exc):
            self._reject(op, payload, exc)
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._record(op, payload, error=exc)
        uri = redact_url_credentials(self._uri or "")
        self._warn_once(
            "down",
            f"MLflow tracking at {uri} failed ({type(exc).__name__}: {one_line(exc, 160)}); training goes on "
            f"and tracking records go to {self.fallback_path} until the store is back",
        )

    def _reject(self, op: str, payload: dict[str, Any], exc: BaseException) -> None:
        self._record(op, payload, error=exc)
        self._warn_once(f"rejected-{op}", f"tracking: {op} not logged ({type(exc).__name__}: {one_line(exc, 200)})")

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, TrackingFallbackWarning, stacklevel=4)

    def _record(self, op: str, payload: dict[str, Any], error: BaseException | None = None) -> None:
        path = self.fallback_path
        if path is None:
            return
        record = {"time": _now_iso(), "op": op, "run_id": self._run_id, "run_name": self._run_name, **payload}
        if error is not None:
            record["error"] = f"{type(error).__name__}: {one_line(error, 400)}"
        try:
            line = json.dumps(record, default=str, allow_nan=False) + "\n"
        except ValueError:  # NaN/inf somewhere in the payload
            line = json.dumps(record, default=str) + "\n"
        try:
            with self._lock:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
        except OSError as exc:
            self._warn_once("fallback-write", f"tracking: cannot write {path} ({exc}); records are lost")

    def _save_figure_locally(self, fig: Figure, name: str) -> Path | None:
        if self._local_dir is None:
            return None
        out = self._local_dir / "figures" / name
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=110, bbox_inches="tight")
        except (OSError, ValueError) as exc:
            self._warn_once("figure-write", f"tracking: cannot save figure {out} ({exc})")
            return None
        return out


def start_sweep_parent(
    cfg: ArmadaConfig,
    name: str,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> RunTracker:
    """Open the parent run of a sweep (``armada.kind=sweep``) and log the config; trials then call
    ``RunTracker.start(..., parent_run_id=parent.run_id)``. ``run_id`` reattaches (a restored sweep), which
    keeps the config it was started with."""
    local = cfg.work_dir / "runs" / cfg.experiment / name
    parent = RunTracker.start(cfg, name, KIND_SWEEP, run_id=run_id, tags=tags, local_dir=local)
    if parent.run_id is None or parent.run_id != run_id:
        parent.log_config(cfg)
    return parent
