"""The teacher cache's store: :class:`TeacherCache`, its shards, manifest and quarantine (see :mod:`armada_ray.cache`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from armada_ray.cache.journal import JOURNAL_DIR, ReplyJournal, lock_by
from armada_ray.config import ConfigError
from armada_ray.fingerprint import canonical_json, fingerprint_id as _fingerprint_id

FORMAT = "armada-teacher-cache/1"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
STATS = "embed_stats.json"
ROW_GROUP = 256
_SHARD_RE = re.compile(r"^shard-\d{6}-[0-9a-f]{8}\.parquet$")
_DTYPES = {"float16": (np.float16, pa.float16()), "float32": (np.float32, pa.float32())}


class CacheError(RuntimeError):
    """The cache on disk is damaged (a checksum or a file does not match the manifest)."""


class CacheMismatchError(ConfigError):
    """A cache folder, shard or setting belongs to another teacher/dimension/dtype (user-fixable)."""


def cache_key(fp_id: str, prompt: str) -> str:
    return hashlib.sha256(f"{fp_id}\0{prompt}".encode("utf-8")).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_sha256(keys: list[str], vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(keys).encode("utf-8"))
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TeacherCache:
    """One teacher's vectors under ``<root>/<fingerprint_id>/`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], fingerprint: dict[str, Any], dim: int,
                 dtype: str = "float16", create: bool = True):
        if dtype not in _DTYPES:
            raise ConfigError(f"config error: cache.dtype={dtype!r}: allowed float16, float32")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"cache dim must be a positive int, got {dim!r}")
        self.root = Path(root).expanduser().resolve()
        self.fingerprint = json.loads(canonical_json(fingerprint))
        self.fingerprint_id = _fingerprint_id(fingerprint)
        self.dim = dim
        self.dtype = dtype
        self._np_dtype, self._pa_dtype = _DTYPES[dtype]
        self.path = self.root / self.fingerprint_id
        self.schema = pa.schema(
            [pa.field("key", pa.string(), nullable=False),
             pa.field("vector", pa.list_(self._pa_dtype, dim), nullable=False)],
            metadata={
                b"armada.format": FORMAT.encode(),
                b"armada.fingerprint": canonical_json(self.fingerprint).encode(),
                b"armada.fingerprint_id": self.fingerprint_id.encode(),
                b"armada.dim": str(dim).encode(),
                b"armada.dtype": dtype.encode(),
            },
        )
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard number in manifest, row)
        self._shards: list[dict[str, Any]] = []
        self._checked: set[str] = set()
        if not (self.path / MANIFEST).is_file() and not create:
            raise FileNotFoundError(f"no teacher cache at {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            manifest = self._read_manifest()
            if manifest is None:
                manifest = self._new_manifest()
                self._write_manifest(manifest)
            self._check_manifest(manifest)
            self._recover(manifest)
            self._load_index(manifest)

    # --------------------------------------------------------------------------- construction
    @classmethod
    def open_existing(cls, root: str | os.PathLike[str], fingerprint: dict[str, Any]) -> "TeacherCache | None":
        """The cache of ``fingerprint`` under ``root`` with its stored dim/dtype, or None if there is none."""
        path = Path(root).expanduser().resolve() / _fingerprint_id(fingerprint) / MANIFEST
        if not path.is_file():
            return None
        manifest = json.loads(path.read_text())
        return cls(root, fingerprint, int(manifest["dim"]), manifest["dtype"], create=False)

    def _new_manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "fingerprint_id": self.fingerprint_id, "fingerprint": self.fingerprint,
                "dim": self.dim, "dtype": self.dtype, "shards": [], "total_rows": 0, "created": _now(),
                "updated": _now()}

    def _check_manifest(self, m: dict[str, Any]) -> None:
        problems = []
        if m.get("fingerprint") != self.fingerprint:
            problems.append(f"its fingerprint {canonical_json(m.get('fingerprint'))} is not this teacher's "
                            f"{canonical_json(self.fingerprint)}")
        if m.get("dim") != self.dim:
            problems.append(f"it stores dim {m.get('dim')}, this teacher gives {self.dim}")
        if m.get("dtype") != self.dtype:
            problems.append(f"it stores {m.get('dtype')}, cache.dtype={self.dtype} was asked for "
                            f"(set cache.dtype={m.get('dtype')} or use another cache.dir)")
        if problems:
            raise CacheMismatchError(f"teacher cache {self.path}: " + "; ".join(problems))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_manifest(self) -> dict[str, Any] | None:
        p = self.path / MANIFEST
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError as exc:
            raise CacheError(f"teacher cache {self.path}: manifest.json is not valid JSON ({exc})") from None

    def _write_manifest(self, m: dict[str, Any]) -> None:
        m["total_rows"] = int(sum(s["rows"] for s in m["shards"]))
        m["updated"] = _now()
        _atomic_write_text(self.path / MANIFEST, json.dumps(m, indent=1, sort_keys=True))

    def _recover(self, manifest: dict[str, Any]) -> None:
        """Remove dead writers' temp files; re-adopt complete shards the manifest missed."""
        listed = {s["file"] for s in manifest["shards"]}
        changed = False
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".tmp-"):
                try:
                    pid = int(p.name.split("-")[1])
                except (IndexError, ValueError):
                    pid = -1
                if pid != os.getpid() and not _pid_alive(pid):
                    p.unlink(missing_ok=True)
            elif _SHARD_RE.match(p.name) and p.name not in listed:
                entry = self._verify_orphan(p)
                if entry is None:
                    os.replace(p, p.with_name(p.name + ".rejected"))
                else:
                    manifest["shards"].append(entry)
                    changed = True
        if changed:
            self._write_manifest(manifest)

    def _verify_orphan(self, p: Path) -> dict[str, Any] | None:
        try:
            table = pq.read_table(p)
            meta = table.schema.metadata or {}
            if (meta.get(b"armada.fingerprint_id", b"").decode() != self.fingerprint_id
                    or meta.get(b"armada.dim", b"").decode() != str(self.dim)
                    or meta.get(b"armada.dtype", b"").decode() != self.dtype):
                return None
            keys = table.column("key").to_pylist()
            vecs = self._vectors_of(table)
            if _content_sha256(keys, vecs) != meta.get(b"armada.content_sha256", b"").decode():
                return None
        except (OSError, pa.ArrowException, ValueError, KeyError):
            return None
        return {"file": p.name, "rows": len(keys), "bytes": p.stat().st_size, "sha256": _sha256_file(p),
                "created": _now(), "adopted": True}

    def _load_index(self, manifest: dict[str, Any]) -> None:
        known = {s["file"] for s in self._shards}
        for entry in manifest["shards"]:
            if entry["file"] in known:
                continue
            number = len(self._shards)
            self._shards.append(entry)
            try:
                keys = pq.read_table(self.path / entry["file"], columns=["key"]).column("key").to_pylist()
            except (pa.ArrowException, OSError) as exc:  # truncated, overwritten or missing since it was listed
                raise CacheError(f"teacher cache {self.path}: shard {entry['file']} listed in {MANIFEST} cannot be read "
                                 f"({str(exc).splitlines()[0]}); remove it from the manifest's shard list (its rows "
                                 "are re-embedded) or restore the file") from None
            for row, key in enumerate(keys):
                self._index.setdefault(key, (number, row))

    def refresh(self) -> None:
        """Pick up shards other writers added since this object was opened."""
        with self._locked():
            manifest = self._read_manifest() or self._new_manifest()
            self._load_index(manifest)

    # ----------------------------------------------------------------------------------- keys
    def key_for(self, prompt: str) -> str:
        return cache_key(self.fingerprint_id, prompt)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return list(self._index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (unique, in first-seen order) that have no vector yet."""
        out, seen = [], set()
        for k in keys:
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    # ---------------------------------------------------------------------------------- write
    def replay_journals(self, wait_s: float = 0.0) -> int:
        """Write the journaled replies of writers no longer alive into a shard, then drop their journals;
        returns how many new vectors that added. A journal whose writer still holds its lock is waited for up
        to ``wait_s`` (the actors of a run killed a moment ago are still shutting down), then left alone."""
        folder = self.path / JOURNAL_DIR
        if not folder.is_dir():
            return 0
        added = 0
        deadline = time.monotonic() + wait_s
        for path in sorted(folder.glob("*.jsonl")):
            with open(path, encoding="utf-8") as fh:
                if not lock_by(fh, deadline):
                    continue  # a live writer
                keys, vecs = ReplyJournal.read(fh, self.dim)
            if keys:
                ok = self.encodable(vecs)  # what the driver would have quarantined stays out
                before = len(self)
                self.write_shard([k for k, good in zip(keys, ok) if good], vecs[ok])
                added += len(self) - before
            path.unlink(missing_ok=True)
        return added

    def encodable(self, vectors: np.ndarray) -> np.ndarray:
        """Rows that stay finite in the cache dtype (float16 overflows above 65504)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.isfinite(np.asarray(vectors, dtype=np.float32).astype(self._np_dtype)).all(axis=1)

    def write_shard(self, keys: list[str], vectors: np.ndarray) -> str | None:
        """Append one shard atomically; keys already cached (or repeated) are skipped. Returns the file
        name, or None when nothing was new."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
            raise ValueError(f"write_shard: vectors of shape {vectors.shape} for {len(keys)} keys of dim {self.dim}")
        with self._locked():
            manifest = self._read_manifest() or self._new_manifest()
            self._load_index(manifest)  # another writer may have added these keys meanwhile
            pick, seen = [], set()
            for i, k in enumerate(keys):
                if k not in self._index and k not in seen:
                    seen.add(k)
                    pick.append(i)
            if not pick:
                return None
            new_keys = [keys[i] for i in pick]
            with np.errstate(over="ignore", invalid="ignore"):
                data = vectors[pick].astype(self._np_dtype)
            if not np.isfinite(data).all():
                raise ValueError(f"write_shard: non-finite values in {self.dtype} (filter rows with encodable())")
            meta = dict(self.schema.metadata)
            meta[b"armada.content_sha256"] = _content_sha256(new_keys, data).encode()
            table = pa.table(
                {"key": pa.array(new_keys, pa.string()),
                 "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1), self._pa_dtype), self.dim)},
                schema=self.schema.with_metadata(meta),
            )
            name = f"shard-{len(manifest['shards']) + 1:06d}-{uuid.uuid4().hex[:8]}.parquet"
            final = self.path / name
            tmp = self.path / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
            pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="zstd")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.path)
            entry = {"file": name, "rows": len(new_keys), "bytes": final.stat().st_size,
                     "sha256": _sha256_file(final), "created": _now()}
            manifest["shards"].append(entry)
            self._write_manifest(manifest)
            self._load_index(manifest)
            self._checked.add(name)
            return name

    def quarantine(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append failed rows (dicts with key, prompt, reason) to quarantine.jsonl; returns how many."""
        lines = []
        for r in rows:
            prompt = str(r.get("prompt", ""))
            lines.append(json.dumps({
                "key": r.get("key"), "uid": r.get("uid"), "prompt_preview": prompt[:160],
                "prompt_chars": len(prompt), "reason": str(r.get("reason", "unknown")), "time": _now(),
            }, ensure_ascii=False))
        if not lines:
            return 0
        with self._locked(), open(self.path / QUARANTINE, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return len(lines)

    def quarantined(self) -> list[dict[str, Any]]:
        p = self.path / QUARANTINE
        if not p.is_file():
            return []
        out = []
        # split on newlines only: str.splitlines also splits on U+0085/U+2028, which a prompt may hold (json.dumps
        # with ensure_ascii=False writes them raw), and the record was then dropped as two broken halves
        for line in p.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    # ----------------------------------------------------------------------------------- read
    def _vectors_of(self, table: pa.Table) -> np.ndarray:
        col = table.column("vector").combine_chunks()
        flat = col.values.to_numpy(zero_copy_only=False)
        return flat.reshape(-1, self.dim)

    def _open_shard(self, entry: dict[str, Any]) -> pq.ParquetFile:
        pf = pq.ParquetFile(self.path / entry["file"])
        if entry["file"] not in self._checked:
            meta = pf.schema_arrow.metadata or {}
            got = {k: meta.get(f"armada.{k}".encode(), b"").decode() for k in ("fingerprint_id", "dim", "dtype")}
            want = {"fingerprint_id": self.fingerprint_id, "dim": str(self.dim), "dtype": self.dtype}
            if got != want:
                raise CacheMismatchError(f"teacher cache {self.path}: shard {entry['file']} has {got}, expected {want}")
            if pf.schema_arrow.field("vector").type != self.schema.field("vector").type:
                raise CacheMismatchError(f"teacher cache {self.path}: shard {entry['file']} has vector type "
                                         f"{pf.schema_arrow.field('vector').type}")
            # the shard is the one the manifest lists, byte for byte: a rewritten shard would otherwise be read as
            # the teacher's vectors (one sha256 pass per shard and process, over bytes about to be read anyway)
            if entry.get("sha256") and _sha256_file(self.path / entry["file"]) != entry["sha256"]:
                raise CacheError(f"teacher cache {self.path}: shard {entry['file']} differs from the sha256 in "
                                 f"{MANIFEST} (changed after it was written); remove it from the manifest's shard "
                                 "list to re-embed its rows")
            self._checked.add(entry["file"])
        return pf

    def lookup(self, keys: list[str]) -> np.ndarray:
        """Vectors (float32, [len(keys), dim]) in the order of ``keys``; KeyError if any is missing."""
        keys = list(keys)
        out = np.zeros((len(keys), self.dim), np.float32)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            loc = self._index.get(k)
            if loc is None:
                missing = self.missing(keys)
                raise KeyError(f"{len(missing)} of {len(set(keys))} keys are not in the teacher cache {self.path} "
                               f"(first: {missing[0]})")
            wanted.setdefault(loc[0], []).append((pos, loc[1]))
        for number, items in wanted.items():  # one shard at a time, only its needed row groups
            pf = self._open_shard(self._shards[number])
            md = pf.metadata
            starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            group_of = {r: int(np.searchsorted(starts, r, side="right") - 1) for _, r in items}
            groups = sorted(set(group_of.values()))
            vecs = self._vectors_of(pf.read_row_groups(groups, columns=["vector"]))
            offset, local = 0, {}
            for g in groups:  # where each needed group starts inside `vecs`
                local[g] = offset
                offset += md.row_group(g).num_rows
            for pos, r in items:
                g = group_of[r]
                out[pos] = vecs[local[g] + r - int(starts[g])]
        return out

    def iter_batches(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(keys, float32 vectors) per row group of every shard, in manifest order."""
        for entry in list(self._shards):
            pf = self._open_shard(entry)
            for g in range(pf.metadata.num_row_groups):
                t = pf.read_row_group(g)
                yield t.column("key").to_pylist(), self._vectors_of(t).astype(np.float32)

    # ---------------------------------------------------------------------------------- report
    def stats(self) -> dict[str, Any]:
        q = self.path / QUARANTINE
        n_q = sum(1 for _ in open(q, encoding="utf-8")) if q.is_file() else 0
        return {
            "path": str(self.path), "fingerprint_id": self.fingerprint_id, "kind": self.fingerprint.get("kind"),
            "dim": self.dim, "dtype": self.dtype, "rows": len(self._index), "shards": len(self._shards),
            "bytes": int(sum(s.get("bytes", 0) for s in self._shards)), "quarantine_lines": n_q,
        }

    def verify(self) -> dict[str, Any]:
        """Check every listed shard against its manifest checksum and row count."""
        problems = []
        for entry in self._shards:
            p = self.path / entry["file"]
            if not p.is_file():
                problems.append(f"{entry['file']}: missing")
                continue
            if _sha256_file(p) != entry["sha256"]:
                problems.append(f"{entry['file']}: sha256 differs from the manifest")
                continue
            rows = pq.ParquetFile(p).metadata.num_rows
            if rows != entry["rows"]:
                problems.append(f"{entry['file']}: {rows} rows, manifest says {entry['rows']}")
        return {"ok": not problems, "shards": len(self._shards), "rows": len(self._index), "problems": problems}

    def write_stats(self, stats: dict[str, Any]) -> Path:
        out = self.path / STATS
        _atomic_write_text(out, json.dumps(stats, indent=1, sort_keys=True, default=str))
        return out

    def dataset_view(self) -> DatasetView:
        """This cache as a run's dataset input (see :func:`dataset_view`)."""
        return dataset_view(self.path)


@dataclass(frozen=True)
class DatasetView:
    """How a cache folder presents itself as a run's dataset input (an MLflow dataset)."""

    name: str  # teacher-cache-<fingerprint_id>
    digest: str  # the fingerprint id: the same vectors have the same digest in every run
    source: Path  # the cache folder
    manifest: Path  # its manifest.json, kept with the run
    rows: tuple[dict[str, Any], ...]  # one per shard (file, rows, bytes, sha256, ...); none yet: the manifest's scalars


def _cell(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value, default=str)


def dataset_view(cache_path: str | os.PathLike[str]) -> DatasetView:
    """The dataset view of the cache folder ``cache_path`` as its manifest lists it now (shards added by other
    writers included). OSError when the manifest cannot be read, CacheError when it is not JSON."""
    folder = Path(cache_path)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CacheError(f"teacher cache {folder}: {MANIFEST} is not valid JSON ({exc})") from None
    digest = str(manifest.get("fingerprint_id") or folder.name)
    shards = manifest.get("shards") or [{k: v for k, v in manifest.items() if not isinstance(v, (list, dict))}]
    rows = tuple({k: _cell(v) for k, v in entry.items()} for entry in shards)
    return DatasetView(name=f"teacher-cache-{digest}", digest=digest, source=folder.resolve(), manifest=path, rows=rows)
