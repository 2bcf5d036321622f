"""Where a run's checkpoints live and how to read them back, on a local folder or any pyarrow filesystem.

A run's Ray Train checkpoints are written under ``<storage>/<experiment>/<run name>/ray/<train run>/checkpoint_*``,
where ``<storage>`` is ``paths.storage`` (a folder, or a URI such as ``s3://bucket/prefix`` or ``gs://...``; Ray
Train writes there natively) or, by default, ``<work_dir>/runs``. Everything else of a run (config.yaml,
summary.json, trial.json, the MLflow store) stays in the shared ``work_dir``. Each checkpoint folder holds:

``deepspeed/<CKPT_TAG>/``      every rank's DeepSpeed shard (frozen base weights left out)
``state.json``                 epoch, history, best metrics, the MLflow run id (so a resumed run logs into it)
``metrics.json``               the epoch's reported metrics (``dev_metric`` picks the best checkpoint)
``config.yaml``, ``task.json`` the resolved config and the task facts the heads were built for
``aligner.pt``, ``tokenizer/``, ``rng_rank<N>.pt``

Listing and reading go through ``pyarrow.fs`` (the filesystem layer Ray Train itself uses), so the same code
serves a local folder, S3, GCS or HDFS. Consumers that need a local folder (DeepSpeed's ``zero_to_fp32`` reader,
export, eval) get one with :func:`local_checkpoint`, which copies a remote checkpoint once into the work dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CKPT_TAG = "state"  # the DeepSpeed tag every checkpoint is saved under


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` locations (s3, gs, hdfs, file, mock); False for plain local paths."""
    return "://" in str(location)


def _fs(location: str) -> tuple[Any, str]:
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def join(location: str, *parts: str) -> str:
    """``location``/``parts`` in the form of ``location`` (a URI joined with /, a local path with the OS's rules)."""
    return posixpath.join(location.rstrip("/"), *parts) if is_uri(location) else str(Path(location, *parts))


def storage_root(cfg: Any) -> str:
    """``paths.storage`` (a folder or URI), else ``<work_dir>/runs``."""
    storage = cfg.paths.storage
    return str(storage) if storage else str(cfg.work_dir / "runs")


def run_storage(cfg: Any) -> str:
    """Where Ray Train writes this run's checkpoints (``RunConfig.storage_path``)."""
    return join(storage_root(cfg), cfg.experiment, cfg.run_name or "train", "ray")


@dataclass(frozen=True)
class CheckpointRecord:
    """One registered checkpoint: where it is (a local folder or a URI) and what its epoch reported."""

    location: str
    metrics: dict[str, Any]  # metrics.json: the epoch's reported metrics

    @property
    def epoch(self) -> int:
        return int(self.metrics.get("epoch", 0))

    @property
    def dev_metric(self) -> float | None:
        return self.metrics.get("dev_metric")


def best_of(records: list[CheckpointRecord]) -> CheckpointRecord | None:
    """The checkpoint with the highest ``dev_metric`` (the one Ray Train's ``CheckpointConfig`` keeps as best), or
    None when no checkpoint was scored."""
    return max((r for r in records if r.dev_metric is not None), key=lambda r: r.dev_metric, default=None)


def list_checkpoints(storage: str) -> list[CheckpointRecord]:
    """Every checkpoint under ``storage`` (a run's Ray Train folder), oldest epoch first. Locations keep the form
    of ``storage``: a URI stays a URI."""
    import pyarrow.fs

    fs, root = _fs(storage)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return []
    found = []
    for run in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        if run.type != pyarrow.fs.FileType.Directory:
            continue
        for ckpt in fs.get_file_info(pyarrow.fs.FileSelector(run.path)):
            name = posixpath.basename(ckpt.path)
            if ckpt.type != pyarrow.fs.FileType.Directory or not name.startswith("checkpoint_"):
                continue
            metrics = posixpath.join(ckpt.path, "metrics.json")
            if fs.get_file_info(metrics).type != pyarrow.fs.FileType.File:
                continue  # a checkpoint still being written
            with fs.open_input_stream(metrics) as f:
                found.append(CheckpointRecord(join(storage, posixpath.basename(run.path), name), json.loads(f.read())))
    return sorted(found, key=lambda r: (r.epoch, r.location))


def read_bytes(checkpoint: str | Path, name: str) -> bytes | None:
    """One file of a checkpoint (local or a URI) without copying the rest, or None if it has none."""
    import pyarrow.fs

    fs, path = _fs(str(checkpoint))
    path = posixpath.join(path, name)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(checkpoint: str, name: str) -> dict[str, Any] | None:
    """A JSON file of a checkpoint (``state.json``, ``task.json``, ``metrics.json``), or None if it has none."""
    raw = read_bytes(checkpoint, name)
    return None if raw is None else json.loads(raw)


def exists(location: str, kind: str = "dir") -> bool:
    """Whether ``location`` (local or a URI) is a folder (``kind="dir"``) or a file (``kind="file"``)."""
    import pyarrow.fs

    fs, path = _fs(location)
    want = pyarrow.fs.FileType.Directory if kind == "dir" else pyarrow.fs.FileType.File
    return fs.get_file_info(path).type == want


def local_checkpoint(checkpoint: str | Path, cache_dir: Path | None = None) -> Path:
    """A local folder holding ``checkpoint``: itself when it is local, else a copy under ``cache_dir`` (default
    ``$ARMADA_CACHE_DIR/checkpoints``) made once, keyed by the URI, with ``pyarrow.fs.copy_files``; a partial copy
    is never left in place."""
    if not is_uri(checkpoint):
        return Path(checkpoint)
    import pyarrow.fs

    uri = str(checkpoint)
    if cache_dir is None:
        cache_dir = Path(os.environ.get("ARMADA_CACHE_DIR") or "~/.cache/armada-ray").expanduser() / "checkpoints"
    dest = Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16] / posixpath.basename(uri.rstrip("/"))
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    fs, path = _fs(uri)
    pyarrow.fs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    tmp.rename(dest)
    return dest


def run_name_of(checkpoint: str | Path) -> str:
    """The run folder's name of a checkpoint (``<run>/ray/<train run>/checkpoint_*``)."""
    parts = str(checkpoint).rstrip("/").split("/")
    return parts[-4] if len(parts) >= 4 else "export"
