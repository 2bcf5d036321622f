"""The MLflow store: its URI, where local artifacts go, a quick health check, the client, experiments and runs.

With no ``tracking.uri`` the store is ``sqlite:///<work_dir>/mlflow.db`` with artifacts under
``<work_dir>/mlartifacts/<experiment>`` (DESIGN §5); an ``http(s)://`` URI is a tracking server, which picks
its own artifact location. A store that cannot be used when a run starts raises :class:`TrackingUnavailable`:
one line naming the URI and the fix. mlflow is imported where used: a disabled tracker never needs it.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from armada_ray.config import ArmadaConfig, ConfigError, redact_url_credentials
from armada_ray.tracking.scrub import clean_key, tag_value
from armada_ray.tracking.tags import EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING, MLFLOW_PARENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROBE_TIMEOUT_S = 3.0

# Applied (unless already set) before talking to an HTTP tracking server: MLflow's defaults retry a
# refused connection 7 times with exponential backoff (minutes per call), which would stall training.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


class TrackingUnavailable(ConfigError):
    """The tracking store cannot be reached when a run starts; the user fixes it (CLI exit code 2)."""


class TrackingFallbackWarning(RuntimeWarning):
    """Tracking records are going to the local JSONL fallback instead of MLflow."""


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


def unavailable(uri: str, reason: str) -> TrackingUnavailable:
    """The error for a store that cannot be used: the URI (credentials redacted), why, and the fixes."""
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
            raise unavailable(uri, f"GET /health failed: {reason}") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unavailable(uri, f"cannot create {db.parent}: {exc.strerror or exc}") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise unavailable(uri, f"{db} is not writable")


def client_for(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` (tracking and registry), with :data:`HTTP_ENV_DEFAULTS` for a server."""
    from mlflow import MlflowClient

    if is_http_uri(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, root: Path | None) -> str:
    """The id of experiment ``name``, created (with an explicit artifact location for local stores)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before armada set it
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
        return found.experiment_id
    location = None
    if root is not None:
        folder = root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING}
        )
    except MlflowException as exc:  # another trial created it first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return again.experiment_id


def open_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    parent_run_id: str | None,
    run_id: str | None,
    tags: dict[str, Any],
) -> Any:
    """The run to log to: ``run_id`` when given (and in the store), else the child ``run_name`` of
    ``parent_run_id`` if it exists, reopened as RUNNING with ``tags`` added; otherwise a new run."""
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
    clean = {clean_key(k): tag_value(v) for k, v in tags.items()}
    if existing is not None:
        if existing.info.status != "RUNNING":
            client.update_run(existing.info.run_id, status="RUNNING")
        client.log_batch(existing.info.run_id, tags=[RunTag(k, v) for k, v in clean.items()])
        return client.get_run(existing.info.run_id)
    if parent_run_id is not None:
        clean[MLFLOW_PARENT_TAG] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=clean)
