"""The reply journal: each embed actor's fsynced, append-only log of teacher replies (see :mod:`armada_ray.cache`)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

JOURNAL_DIR = "journal"


def lock_by(fh: Any, deadline: float) -> bool:
    """Take the exclusive lock on ``fh``, retrying until ``deadline`` (monotonic); False if still held."""
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


class ReplyJournal:
    """One writer's append-only log of teacher replies, each batch fsynced before it counts as answered.

    Written by hand: neither Ray Data nor pyarrow offers an append-and-fsync record log, and a Parquet shard per
    16-row batch would bloat the manifest. The writer holds an ``flock`` on its file for its lifetime, so
    :meth:`TeacherCache.replay_journals` can tell a dead writer's journal from a live one's.
    """

    def __init__(self, cache_path: str | os.PathLike[str], writer: str | None = None):
        folder = Path(cache_path) / JOURNAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{writer or uuid.uuid4().hex}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def append(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        data = np.ascontiguousarray(vectors, dtype="<f4")
        self._f.write(json.dumps({"keys": list(keys), "vectors": base64.b64encode(data.tobytes()).decode()}) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()

    @staticmethod
    def read(fh: Any, dim: int) -> tuple[list[str], np.ndarray]:
        """Every complete record of an open journal; a torn last line (the writer was killed mid-write) ends it."""
        keys: list[str] = []
        vecs: list[np.ndarray] = []
        for line in fh:
            try:
                rec = json.loads(line)
                v = np.frombuffer(base64.b64decode(rec["vectors"]), dtype="<f4").reshape(len(rec["keys"]), dim)
            except (ValueError, KeyError, TypeError):
                break
            keys += [str(k) for k in rec["keys"]]
            vecs.append(v)
        return keys, (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32))
