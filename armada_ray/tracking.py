"""MLflow tracking for armada-ray: runs, sweep trials as nested runs, artifacts, the registry, the UI.

Why our own thin layer rather than Ray's MLflow integration: under Ray Train V2 (the default in Ray
2.60) ``MLflowLoggerCallback`` on ``ray.train.RunConfig`` is rejected ("All callbacks must be instances
of ray.train.UserCallback"), and ``setup_mlflow`` / ``mlflow.set_experiment`` pass the tracking URI and
experiment through process-wide environment variables that Ray's helpers then prefer (NOTES.md). So
:class:`RunTracker` talks to one explicit ``MlflowClient`` with explicit experiment and run ids, and
this module never imports Ray: the training driver, a Train ``UserCallback`` or rank 0 calls it.

Layout (DESIGN §5): one experiment per config name; ``armada tune`` opens a parent run
(:func:`start_sweep_parent`) and every trial is a child run (``parent_run_id=``) carrying the same
:func:`standard_tags`; a restarted trial reattaches to its run (``run_id=``, or its name under the same
parent) instead of opening a duplicate. With no ``tracking.uri`` the store is
``sqlite:///<work_dir>/mlflow.db`` with artifacts under ``<work_dir>/mlartifacts/<experiment>``, and
``armada ui`` (:func:`run_ui`) serves it on 127.0.0.1.

Resilience: a store that cannot be reached when a run starts raises :class:`TrackingUnavailable` (one
line naming the URI and the fix). If it goes away mid-run, every logging call catches the error,
appends the record to ``<local_dir>/tracking_fallback.jsonl``, warns once and tries the store again
after ``RETRY_AFTER_S``: training never fails because of tracking. ``RunTracker.disabled()``
(``tracking.enabled=false``) has the same API and writes only that local file. Parameters are
scrubbed of secrets before they go anywhere (:func:`scrub_params`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from armada_ray import environ
from armada_ray.config import ArmadaConfig, ConfigError, dump_config, flatten, redact_url_credentials

if TYPE_CHECKING:  # mlflow and matplotlib are imported where used: a disabled tracker needs neither
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

FALLBACK_FILE = "tracking_fallback.jsonl"
UI_HOST = "127.0.0.1"
UI_PORT = 5000
PROBE_TIMEOUT_S = 3.0
RETRY_AFTER_S = 30.0
EXPORT_ARTIFACT_PATH = "export"
CACHE_CONTEXT = "teacher_cache"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# Our tags (every run of a sweep carries the same ones) and the MLflow ones we set.
TAG_KIND = "armada.kind"
TAG_CONFIG = "armada.config"
TAG_TASK = "armada.task"
TAG_STUDENT = "armada.student"
TAG_LOSS_MODE = "armada.loss_mode"
TAG_TEACHER_KIND = "armada.teacher_kind"
TAG_TEACHER_MODEL = "armada.teacher_model"
TAG_TEACHER_FINGERPRINT = "armada.teacher_fingerprint"
TAG_STAND_IN = "armada.teacher_stand_in"
TAG_GIT_COMMIT = "armada.git_commit"
TAG_RAY_JOB_ID = "armada.ray_job_id"
TAG_RAY_SUBMISSION_ID = "armada.ray_submission_id"
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
MLFLOW_RUN_NAME_TAG = "mlflow.runName"
MLFLOW_GIT_TAG = "mlflow.source.git.commit"

# MLflow's limits (mlflow.utils.validation, 3.17).
MAX_PARAM_VALUE_CHARS = 6000
MAX_KEY_CHARS = 250
MAX_TAG_VALUE_CHARS = 8000

# Applied (unless already set) before talking to an HTTP tracking server: MLflow's defaults retry a
# refused connection 7 times with exponential backoff (minutes per call), which would stall training.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

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


class TrackingUnavailable(ConfigError):
    """The tracking store cannot be reached when a run starts; the user fixes it (CLI exit code 2)."""


class TrackingFallbackWarning(RuntimeWarning):
    """Tracking records are going to the local JSONL fallback instead of MLflow."""


# ------------------------------------------------------------------------------------------- helpers


def is_http_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI (``sqlite:////abs`` is absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser()


def artifact_root(cfg: ArmadaConfig) -> Path | None:
    """Where runs of a local sqlite store keep artifacts (``<work_dir>/mlartifacts`` by default).

    None for other stores: a tracking server chooses its own artifact location.
    """
    if cfg.tracking.uri is None:
        return cfg.work_dir / "mlartifacts"
    db = sqlite_path(cfg.tracking.uri)
    return db.resolve().parent / "mlartifacts" if db is not None else None


# MLflow 3's UI opens in its GenAI view unless the URL (or the browser's last choice) asks for model training
TRAINING_VIEW = "?workflowType=machine_learning"


def ui_url(uri: str, experiment_id: str | None = None, run_id: str | None = None, port: int = UI_PORT) -> str:
    """The MLflow UI address for a store: the server itself, or ``armada ui`` on 127.0.0.1 for a local one."""
    base = redact_url_credentials(uri.rstrip("/")) if is_http_uri(uri) else f"http://{UI_HOST}:{port}"
    if experiment_id is None:
        return base
    if run_id is None:
        return f"{base}/#/experiments/{experiment_id}/runs{TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = redact_url_credentials(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unavailable(uri: str, reason: str) -> TrackingUnavailable:
    uri = redact_url_credentials(uri)
    return TrackingUnavailable(
        f"tracking error: the MLflow tracking store {uri} cannot be used ({reason}); start it, set "
        f"tracking.uri=<a reachable server or sqlite:///path/mlflow.db>, or tracking.enabled=false to run "
        f"without MLflow"
    )


def check_tracking_store(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnavailable` unless ``uri`` can be used right now (a quick check).

    HTTP servers: ``GET /health`` within ``timeout_s`` (any HTTP answer counts: the server is up).
    sqlite: the database's folder can be created and written.
    """
    if is_http_uri(uri):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                resp.read(64)
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _unavailable(uri, f"GET /health failed: {reason}") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unavailable(uri, f"cannot create {db.parent}: {exc.strerror or exc}") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise _unavailable(uri, f"{db} is not writable")


def _prepare_client_env(uri: str) -> None:
    if is_http_uri(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _is_rejection(exc: BaseException) -> bool:
    """True when the store answered and refused the record (bad name, changed param): not an outage."""
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in _REJECTED_CODES


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the armada-ray checkout (else of the working directory), or None outside git."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            continue
        commit = out.stdout.strip()
        if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit):
            return commit
    return None


def ray_job_ids() -> dict[str, str]:
    """Ray job id / submission id of this process, found without importing Ray.

    ``ray job submit`` hands the driver its submission id in ``RAY_JOB_CONFIG_JSON_ENV_VAR``; Ray
    workers see ``RAY_JOB_ID``; a driver that has already imported and initialised Ray is asked.
    """
    from armada_ray.ray_utils import submission_id

    ids: dict[str, str] = {}
    sub = submission_id()
    if sub:
        ids[TAG_RAY_SUBMISSION_ID] = sub
    job = os.environ.get("RAY_JOB_ID")
    ray = sys.modules.get("ray")
    if not job and ray is not None:
        try:
            if ray.is_initialized():
                job = ray.get_runtime_context().get_job_id()
        except Exception:  # noqa: BLE001 - best effort: a tag, never a failure
            job = None
    if job:
        ids[TAG_RAY_JOB_ID] = str(job)
    return ids


def standard_tags(cfg: ArmadaConfig, teacher_fingerprint_id: str | None) -> dict[str, str]:
    """The tags every run of this config carries (a sweep's parent and trials alike)."""
    teacher = cfg.teacher
    teacher_model = f"{teacher.model}@{teacher.endpoint}" if teacher.kind == "http" else teacher.model
    tags = {
        TAG_CONFIG: cfg.name,
        TAG_TASK: cfg.task.name,
        TAG_STUDENT: cfg.student.model,
        TAG_LOSS_MODE: cfg.loss.mode,
        TAG_TEACHER_KIND: teacher.kind,
        TAG_TEACHER_MODEL: teacher_model,
        TAG_STAND_IN: str(bool(teacher.stand_in)).lower(),
    }
    if teacher_fingerprint_id:
        tags[TAG_TEACHER_FINGERPRINT] = teacher_fingerprint_id
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags[MLFLOW_GIT_TAG] = commit
    tags.update(ray_job_ids())
    return tags


# --------------------------------------------------------------------------------- secrets, limits

_SECRET_WORDS = {
    "key", "apikey", "accesskey", "secretkey", "privatekey", "token", "secret", "password", "passwd",
    "credential", "credentials", "auth", "authorization", "bearer", "cookie",
}
# A name ending in one of these points at a secret (an env var, a file) rather than holding it.
_POINTER_WORDS = {"env", "envvar", "var", "path", "file", "dir", "sock", "socket", "url", "name", "type"}


def is_secret_name(name: str) -> bool:
    """Whether a (dotted) parameter name looks like it holds a secret.

    The last component is split into words (``api_key``, ``hfToken``): a word such as key, token,
    secret or password marks a secret, unless the name ends in ``_env`` (it names the environment
    variable that holds the secret, e.g. ``teacher.api_key_env``; likewise ``_path``, ``_file``...).
    ``tokens_per_min`` is not a secret.
    """
    leaf = name.rsplit(".", 1)[-1]
    leaf = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", leaf).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", leaf) if w]
    if not words or words[-1] in _POINTER_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words)


def _secret_values(params: Mapping[str, Any]) -> set[str]:
    """Values of environment variables that hold secrets: named by a ``*_env`` param or named like one."""
    values: set[str] = set()
    env = environ.snapshot()  # library threads change os.environ while we read it (issue 18)
    for key, value in params.items():
        if key.lower().endswith("_env") and isinstance(value, str) and env.get(value):
            values.add(env[value])
    for name, value in env.items():
        if is_secret_name(name.replace("__", ".")) and len(value) >= 8:
            values.add(value)
    return {v for v in values if len(v) >= 6}


def scrub_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop secrets: (kept params, dropped names).

    Dropped: a name that looks like a secret (:func:`is_secret_name`) with a value other than None,
    and any value containing the value of a secret environment variable.
    """
    secrets = _secret_values(params)
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in params.items():
        text = "" if value is None else str(value)
        if (value is not None and is_secret_name(key)) or any(s in text for s in secrets):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def clean_key(name: str) -> str:
    """A metric/param name MLflow accepts: bad characters become ``_``, no ``..`` or leading ``/``."""
    key = re.sub(r"[^/\w.\- :]", "_", str(name))
    key = re.sub(r"/+", "/", key).strip("/")
    key = "/".join(p if p not in (".", "..") else "_" for p in key.split("/"))
    return (key or "_")[:MAX_KEY_CHARS]


def _param_value(value: Any) -> str:
    text = redact_url_credentials(json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    return text if len(text) <= MAX_PARAM_VALUE_CHARS else text[: MAX_PARAM_VALUE_CHARS - 3] + "..."


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _tag_value(value: Any) -> str:
    text = redact_url_credentials(str(value))
    return text if len(text) <= MAX_TAG_VALUE_CHARS else text[: MAX_TAG_VALUE_CHARS - 3] + "..."


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------ tracker


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

        ``kind``: what the run is (``train``, ``trial``, ``sweep``, ``eval``...), tagged ``armada.kind``.
        ``parent_run_id``: make it a child run (a sweep trial). ``run_id``: reattach to that run (a resumed
        trial keeps its run). Without ``run_id``, a child whose name already exists under the same parent
        is reattached too, so a restarted trial never duplicates its run. ``tags`` are added to
        :func:`standard_tags` (pass ``standard_tags(cfg, fingerprint_id)`` to tag the teacher cache).
        ``local_dir`` holds the JSONL fallback (default ``cfg.run_dir``).
        Returns :meth:`disabled` when ``tracking.enabled`` is false; raises :class:`TrackingUnavailable`
        when the store cannot be reached.
        """
        local = Path(local_dir) if local_dir is not None else cfg.run_dir
        if not cfg.tracking.enabled:
            return cls.disabled(cfg, local_dir=local, run_name=run_name, kind=kind)
        uri = cfg.tracking_uri
        _prepare_client_env(uri)
        check_tracking_store(uri)
        all_tags = {**standard_tags(cfg, None), TAG_KIND: kind}
        all_tags.update({k: v for k, v in (tags or {}).items() if v is not None})
        try:
            client = _client(uri)
            experiment_id = _ensure_experiment(client, cfg.experiment, artifact_root(cfg))
            run = _open_run(client, experiment_id, run_name, parent_run_id, run_id, all_tags)
        except Exception as exc:
            if getattr(exc, "error_code", None) in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
                raise  # a bad run/parent id or name: the caller's bug, not the store's state
            raise _unavailable(uri, _one_line(exc)) from exc
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
        values = {clean_key(k): _param_value(v) for k, v in kept.items()}
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
            number = _metric_value(value)
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
        self.set_tags({"mlflow.note.content": markdown})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {clean_key(k): _tag_value(v) for k, v in tags.items() if v is not None}

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

    def log_cache_dataset(self, manifest_path: str | os.PathLike[str], name: str) -> None:
        """Record the teacher cache as the run's dataset input (context ``teacher_cache``) plus its manifest."""
        path = Path(manifest_path)
        payload = {"manifest": str(path.resolve()), "name": name}
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self._reject("dataset", payload, exc)
            return

        def send() -> None:
            import mlflow.data
            from mlflow.entities import DatasetInput, InputTag

            frame = _manifest_frame(manifest)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways", int columns
                dataset = mlflow.data.from_pandas(
                    frame, source=str(path.parent.resolve()), name=name, digest=_manifest_digest(manifest, path)
                )
                entity = dataset._to_mlflow_entity()
            self._client.log_inputs(
                self._run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", CACHE_CONTEXT)])]
            )
            self._client.log_artifact(self._run_id, str(path), CACHE_CONTEXT)

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
            _prepare_client_env(self._uri)
            self._client_obj = _client(self._uri)
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
            f"MLflow tracking at {uri} failed ({type(exc).__name__}: {_one_line(exc, 160)}); training goes on "
            f"and tracking records go to {self.fallback_path} until the store is back",
        )

    def _reject(self, op: str, payload: dict[str, Any], exc: BaseException) -> None:
        self._record(op, payload, error=exc)
        self._warn_once(f"rejected-{op}", f"tracking: {op} not logged ({type(exc).__name__}: {_one_line(exc, 200)})")

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
            record["error"] = f"{type(error).__name__}: {_one_line(error, 400)}"
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


# MLflow 3 opens an experiment without a kind on its GenAI overview; ours hold training runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def _ensure_experiment(client: MlflowClient, name: str, root: Path | None) -> str:
    """The id of experiment ``name``, created (with an explicit artifact location for local stores)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before armada set it
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return found.experiment_id
    location = None
    if root is not None:
        folder = root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except MlflowException as exc:  # another trial created it first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return again.experiment_id


def _open_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    parent_run_id: str | None,
    run_id: str | None,
    tags: dict[str, Any],
) -> Any:
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    existing = None
    if run_id is not None:
        try:
            existing = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            warnings.warn(
                f"tracking: run {run_id} is not in this store; opening a new run {run_name!r}",
                TrackingFallbackWarning,
                stacklevel=3,
            )
    elif parent_run_id is not None:
        siblings = client.search_runs(
            [experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_TAG}` = '{parent_run_id}'", max_results=5000
        )
        same = [r for r in siblings if r.info.run_name == run_name]
        existing = same[0] if same else None
    clean = {clean_key(k): _tag_value(v) for k, v in tags.items()}
    if existing is not None:
        if existing.info.status != "RUNNING":
            client.update_run(existing.info.run_id, status="RUNNING")
        client.log_batch(existing.info.run_id, tags=[RunTag(k, v) for k, v in clean.items()])
        return client.get_run(existing.info.run_id)
    if parent_run_id is not None:
        clean[MLFLOW_PARENT_TAG] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=clean)


def _manifest_frame(manifest: Mapping[str, Any]) -> Any:
    """A table for the MLflow dataset view: one row per cache shard, else one row of the manifest's scalars."""
    import pandas as pd

    def cell(value: Any) -> Any:
        return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, default=str)

    shards = manifest.get("shards")
    if isinstance(shards, list) and shards:
        rows = [
            {k: cell(v) for k, v in s.items()} if isinstance(s, Mapping) else {"shard": cell(s)} for s in shards
        ]
        return pd.DataFrame(rows)
    return pd.DataFrame([{k: cell(v) for k, v in manifest.items() if not isinstance(v, (list, dict))}])


def _manifest_digest(manifest: Mapping[str, Any], path: Path) -> str:
    for key in ("fingerprint_id", "fingerprint", "key", "digest"):
        value = manifest.get(key)
        if isinstance(value, str) and value:
            return value[:36]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def start_sweep_parent(
    cfg: ArmadaConfig,
    name: str,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> RunTracker:
    """Open the parent run of a sweep (``armada.kind=sweep``) and log the config; trials then call
    ``RunTracker.start(..., parent_run_id=parent.run_id)``. ``run_id`` reattaches (a restored sweep)."""
    local = cfg.work_dir / "runs" / cfg.experiment / name
    parent = RunTracker.start(cfg, name, "sweep", run_id=run_id, tags=tags, local_dir=local)
    parent.log_config(cfg)
    return parent


# --------------------------------------------------------------------------------- MLflow server/UI


@dataclass
class MlflowServer:
    """A ``mlflow server`` we started in its own process group (see :func:`start_mlflow_server`)."""

    url: str
    pid: int
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM this server's process group; SIGKILL whatever is left after ``grace_s``."""
        deadline = time.monotonic() + grace_s
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(self.pid) or self.process.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return self.process.poll()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in group ``pgid``?"""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def start_mlflow_server(
    backend_uri: str,
    artifacts_dir: str | os.PathLike[str],
    port: int,
    host: str = UI_HOST,
    workers: int = 1,
    timeout_s: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` over ``backend_uri`` (artifacts proxied from ``artifacts_dir``) and wait for
    ``/health``. It runs in a new session, so :meth:`MlflowServer.stop` ends exactly its process group.
    Its output goes to ``log_path`` (default ``<artifacts_dir>/../mlflow-server-<port>.log``)."""
    artifacts = Path(artifacts_dir).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    db = sqlite_path(backend_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    if port_in_use(host, port):
        raise OSError(f"port {port} on {host} is already in use")
    logfile = Path(log_path) if log_path is not None else artifacts.parent / f"mlflow-server-{port}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]
    with logfile.open("ab") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    server = MlflowServer(url=f"http://{host}:{port}", pid=process.pid, log_path=logfile, process=process)
    try:
        _wait_healthy(server, timeout_s)
    except BaseException:  # including Ctrl-C while waiting: never leave the server behind
        server.stop(grace_s=5)
        raise
    return server


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = server.poll()
        if code is not None:
            raise RuntimeError(
                f"mlflow server exited with code {code} before answering /health; its log {server.log_path} "
                f"ends:\n{_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"mlflow server on {server.url} did not answer /health within {timeout_s:.0f} s; see {server.log_path}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_ui(cfg: ArmadaConfig, port: int = UI_PORT) -> dict[str, Any]:
    """``armada ui``: serve the project's tracking store on 127.0.0.1:``port`` until Ctrl-C.

    A remote ``tracking.uri`` already has its UI: its address is printed and nothing is started.
    """
    uri = cfg.tracking_uri
    if is_http_uri(uri):
        print(f"MLflow UI: {uri} (the tracking server set in tracking.uri; nothing to start)", flush=True)
        return {"url": uri, "tracking_uri": uri, "started": False}
    artifacts = cfg.work_dir / "mlartifacts"
    if port_in_use(UI_HOST, port):
        raise ConfigError(f"ui: port {port} on {UI_HOST} is already in use; pick another with --port N")
    print(f"starting the MLflow UI over {uri} (artifacts {artifacts}); this takes about 10 s ...", flush=True)
    server = start_mlflow_server(uri, artifacts, port, log_path=cfg.work_dir / "mlflow-ui.log")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        experiment_url = server.url
        try:
            found = _client(uri).get_experiment_by_name(cfg.experiment)
            if found is not None:
                experiment_url = f"{server.url}/#/experiments/{found.experiment_id}/runs{TRAINING_VIEW}"
        except Exception:  # noqa: BLE001 - only used to print a deeper link
            pass
        print(f"MLflow UI: {server.url}", flush=True)
        if experiment_url != server.url:
            print(f"experiment {cfg.experiment}: {experiment_url}", flush=True)
        print(f"(log: {server.log_path}; press Ctrl-C to stop)", flush=True)
        try:
            while server.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping the MLflow UI ...", flush=True)
        else:
            raise RuntimeError(
                f"the MLflow UI exited with code {server.poll()}; its log ends:\n{_tail(server.log_path)}"
            )
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return {"url": server.url, "experiment_url": experiment_url, "tracking_uri": uri, "log": str(server.log_path)}


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
