"""The content-addressed teacher cache: real Parquet files, real processes killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from armada_ray.cache import (
    CacheError,
    CacheMismatchError,
    TeacherCache,
    cache_key,
    dataset_view,
    open_cache,
    open_cache_for,
    resolve_teacher_identity,
)
from armada_ray.config import ConfigError, load_config
from armada_ray.fingerprint import TeacherIdentity, fingerprint_id
from armada_ray.teachers import factory

FP = {"kind": "hf", "model": "unit-test", "pooling": "mean", "prompt_template": "{text}", "dim": 8}


def _vecs(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _fill(cache: TeacherCache, prompts: list[str], seed: int = 0) -> np.ndarray:
    v = _vecs(len(prompts), cache.dim, seed)
    cache.write_shard([cache.key_for(p) for p in prompts], v)
    return v


def test_roundtrip_float16_and_float32(tmp_path: Path) -> None:
    for dtype, tol in (("float16", 2e-3), ("float32", 0.0)):
        cache = TeacherCache(tmp_path / dtype, FP, 8, dtype)
        prompts = [f"text {i}" for i in range(300)]
        v = _fill(cache, prompts)
        got = cache.lookup([cache.key_for(p) for p in reversed(prompts)])
        assert got.dtype == np.float32 and got.shape == (300, 8)
        np.testing.assert_allclose(got, v[::-1], rtol=tol, atol=tol)
        # reopening reads the index back from the shards
        again = TeacherCache(tmp_path / dtype, FP, 8, dtype)
        assert len(again) == 300
        np.testing.assert_allclose(again.lookup([again.key_for("text 7")])[0], v[7], rtol=tol, atol=tol)


def test_keys_fingerprints_and_layout(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    fid = fingerprint_id(FP)
    assert cache.path == tmp_path.resolve() / fid
    assert cache.key_for("a cat") == cache_key(fid, "a cat") == cache.key_for("a cat")
    assert cache.key_for("a cat") != cache.key_for("a dog")
    other = TeacherCache(tmp_path, {**FP, "prompt_template": "a photo of {text}"}, 8)
    assert other.path != cache.path and other.key_for("a cat") != cache.key_for("a cat")
    _fill(cache, ["a", "b", "c"])
    m = json.loads((cache.path / "manifest.json").read_text())
    assert m["fingerprint"] == FP and m["dim"] == 8 and m["dtype"] == "float16" and m["total_rows"] == 3
    [shard] = m["shards"]
    assert shard["rows"] == 3 and len(shard["sha256"]) == 64
    meta = pq.read_schema(cache.path / shard["file"]).metadata
    assert json.loads(meta[b"armada.fingerprint"]) == FP and meta[b"armada.dim"] == b"8"
    schema = pq.read_schema(cache.path / shard["file"])
    vtype = schema.field("vector").type
    assert vtype.list_size == 8 and str(vtype.value_type) == "halffloat"


def test_missing_dedupe_and_errors(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    k = [cache.key_for(p) for p in ["x", "y", "z"]]
    assert cache.missing(k + k) == k
    _fill(cache, ["x", "y"])
    assert cache.missing(k) == [k[2]]
    # already-cached and repeated keys are skipped; nothing new -> no shard
    assert cache.write_shard([k[0], k[0]], _vecs(2)) is None
    name = cache.write_shard([k[2], k[2], k[0]], _vecs(3))
    assert name and len(cache) == 3 and len(json.loads((cache.path / "manifest.json").read_text())["shards"]) == 2
    got = cache.lookup([k[1], k[1]])
    assert np.array_equal(got[0], got[1])
    with pytest.raises(KeyError, match="1 of 1 keys"):
        cache.lookup([cache.key_for("never")])
    with pytest.raises(ValueError, match="shape"):
        cache.write_shard(["a"], _vecs(1, dim=4))
    big = np.full((1, 8), 1e6, np.float32)
    assert not cache.encodable(big)[0]
    with pytest.raises(ValueError, match="non-finite"):
        cache.write_shard([cache.key_for("huge")], big)


def test_mismatches_are_errors(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8, "float16")
    _fill(cache, ["a"])
    with pytest.raises(CacheMismatchError, match="stores float16"):
        TeacherCache(tmp_path, FP, 8, "float32")
    assert issubclass(CacheMismatchError, ConfigError)  # user-fixable: CLI exit 2
    # a shard of another teacher smuggled into this folder's manifest is refused on read
    other = TeacherCache(tmp_path / "other", {**FP, "model": "someone-else"}, 8)
    _fill(other, ["b"])
    foreign = json.loads((other.path / "manifest.json").read_text())["shards"][0]
    os.replace(other.path / foreign["file"], cache.path / foreign["file"])
    m = json.loads((cache.path / "manifest.json").read_text())
    m["shards"].append(foreign)
    (cache.path / "manifest.json").write_text(json.dumps(m))
    reopened = TeacherCache(tmp_path, FP, 8)
    with pytest.raises(CacheMismatchError, match="fingerprint_id"):
        reopened.lookup([other.key_for("b")])


def test_lookup_reads_only_needed_shards(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    for s in range(4):
        _fill(cache, [f"s{s}-{i}" for i in range(600)], seed=s)
    fresh = TeacherCache(tmp_path, FP, 8)
    opened: list[str] = []
    real = fresh._open_shard

    def spy(entry):
        opened.append(entry["file"])
        return real(entry)

    fresh._open_shard = spy  # type: ignore[method-assign]
    v = fresh.lookup([fresh.key_for("s2-5"), fresh.key_for("s2-590")])
    assert len(opened) == 1 and opened[0] == fresh._shards[2]["file"]
    np.testing.assert_allclose(v[0], _vecs(600, seed=2)[5], atol=2e-3)
    np.testing.assert_allclose(v[1], _vecs(600, seed=2)[590], atol=2e-3)
    assert sum(len(k) for k, _ in fresh.iter_batches()) == 2400


def test_orphans_tmp_files_and_verify(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    _fill(cache, ["a", "b"])
    _fill(cache, ["c"])
    # killed between the shard rename and the manifest rewrite: drop the last entry
    m = json.loads((cache.path / "manifest.json").read_text())
    orphan = m["shards"].pop()
    (cache.path / "manifest.json").write_text(json.dumps(m))
    # a leftover temp file of a dead writer, and a damaged shard-named file
    (cache.path / ".tmp-999999-deadbeef-shard-000009-00000000.parquet").write_bytes(b"PAR1 half")
    (cache.path / "shard-000010-0badf00d.parquet").write_bytes(b"not parquet at all")
    again = TeacherCache(tmp_path, FP, 8)
    assert len(again) == 3 and again.key_for("c") in again
    names = {s["file"] for s in json.loads((again.path / "manifest.json").read_text())["shards"]}
    assert orphan["file"] in names and "shard-000010-0badf00d.parquet" not in names
    assert (again.path / "shard-000010-0badf00d.parquet.rejected").exists()
    assert not list(again.path.glob(".tmp-999999-*"))
    assert again.verify()["ok"]
    # flip a byte in a listed shard: verify names it
    p = again.path / orphan["file"]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    report = again.verify()
    assert not report["ok"] and orphan["file"] in report["problems"][0]


def test_quarantine_stats_and_open_cache_for(tmp_path: Path) -> None:
    cfg = load_config(None, ["teacher.kind=http", "teacher.dim=8", f"paths.work_dir={tmp_path}"])
    assert open_cache_for(cfg) is None
    from armada_ray.teachers.factory import teacher_fingerprint

    cache = TeacherCache(cfg.cache_root, teacher_fingerprint(cfg.teacher), 8)
    _fill(cache, ["a"])
    assert cache.quarantine([{"key": "k1", "prompt": "x" * 500, "reason": "wrong_dim: got 3, expected 8"},
                             {"key": "k2", "prompt": "", "reason": "empty_prompt"}]) == 2
    q = cache.quarantined()
    assert [r["reason"].split(":")[0] for r in q] == ["wrong_dim", "empty_prompt"]
    assert len(q[0]["prompt_preview"]) == 160 and q[0]["prompt_chars"] == 500
    opened = open_cache_for(cfg)
    assert opened is not None and opened.path == cache.path and len(opened) == 1
    st = opened.stats()
    assert st["rows"] == 1 and st["quarantine_lines"] == 2 and st["dim"] == 8


def test_dataset_view_describes_the_cache_by_its_manifest(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    empty = cache.dataset_view()  # no shard yet: one row of the manifest's scalars
    assert empty.digest == cache.fingerprint_id and empty.name == f"teacher-cache-{cache.fingerprint_id}"
    [row] = empty.rows
    assert row["fingerprint_id"] == cache.fingerprint_id and row["dim"] == 8 and "fingerprint" not in row
    _fill(cache, ["a", "b"])
    TeacherCache(tmp_path, FP, 8).write_shard([cache.key_for("c")], _vecs(1))  # another writer's shard counts
    view = cache.dataset_view()
    assert view.source == cache.path and view.manifest == cache.path / "manifest.json"
    assert [r["rows"] for r in view.rows] == [2, 1] and all(len(r["sha256"]) == 64 for r in view.rows)
    assert dataset_view(cache.path) == view
    (cache.path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="manifest.json"):
        cache.dataset_view()


def test_the_driver_resolves_the_teacher_once_and_a_worker_opens_the_cache_by_it(tmp_path: Path, request) -> None:
    cfg = load_config(None, ["teacher.kind=http", "teacher.dim=8", f"paths.work_dir={tmp_path}"])
    assert resolve_teacher_identity(cfg) is None  # never embedded
    cache = TeacherCache(cfg.cache_root, factory.teacher_fingerprint(cfg.teacher), 8, "float32")
    v = _fill(cache, ["a", "b"])
    identity = resolve_teacher_identity(cfg)  # the driver's side
    assert identity is not None and identity.fingerprint_id == cache.fingerprint_id
    assert (identity.cache_path, identity.dim, identity.dtype) == (str(cache.path), 8, "float32")
    assert identity.fingerprint == cache.fingerprint and identity.stand_in == cfg.teacher.stand_in
    wire = json.loads(json.dumps(identity.to_json()))  # what a worker's config carries
    assert TeacherIdentity.from_json(wire) == identity
    with pytest.raises(ValueError, match="unknown field"):
        TeacherIdentity.from_json({**wire, "extra": 1})

    request.getfixturevalue("forbid_fingerprinting")  # from here on, as in a worker
    opened = open_cache(TeacherIdentity.from_json(wire))
    assert opened.path == cache.path and opened.fingerprint_id == identity.fingerprint_id
    np.testing.assert_array_equal(opened.lookup([opened.key_for("b"), opened.key_for("a")]), v[::-1])
    # the trainer reuses a known identity for the same teacher (the shuffle ablation reads the same vectors) ...
    assert resolve_teacher_identity(cfg, known=identity) is identity
    shuffled = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"shuffle": "pairs"})})
    assert resolve_teacher_identity(shuffled, known=identity) is identity
    # ... but a config with another teacher needs its own: it is resolved, not given the driver's
    other = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"prompt_template": "a {text}"})})
    with pytest.raises(AssertionError, match="fingerprinted"):
        resolve_teacher_identity(other, known=identity)
    # a node that cannot see the driver's cache folder says so
    elsewhere = TeacherIdentity.from_json({**wire, "cache_path": str(tmp_path / "not-shared" / identity.fingerprint_id)})
    with pytest.raises(ConfigError, match="every node reads"):
        open_cache(elsewhere)
    forged = TeacherIdentity.from_json({**wire, "fingerprint_id": "0" * 16})
    with pytest.raises(CacheMismatchError, match="fingerprint_id"):
        open_cache(forged)


def test_two_writers_share_one_folder(tmp_path: Path) -> None:
    a, b = TeacherCache(tmp_path, FP, 8), TeacherCache(tmp_path, FP, 8)
    _fill(a, ["p1", "p2"])
    assert b.write_shard([b.key_for("p2"), b.key_for("p3")], _vecs(2)) is not None  # p2 skipped
    a.refresh()
    assert len(a) == len(b) == 3
    assert json.loads((a.path / "manifest.json").read_text())["total_rows"] == 3


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from armada_ray.cache import TeacherCache
    fp = {"kind": "hf", "model": "unit-test", "pooling": "mean", "prompt_template": "{text}", "dim": 8}
    c = TeacherCache(sys.argv[1], fp, 64)
    print("ready", flush=True)
    i = 0
    while True:
        keys = [c.key_for(f"row {i}-{j}") for j in range(2000)]
        c.write_shard(keys, np.random.default_rng(i).standard_normal((2000, 64)).astype(np.float32))
        i += 1
""")


def test_sigkilled_writer_leaves_a_consistent_cache(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        manifest = None
        while time.time() < deadline:
            found = list(tmp_path.glob("*/manifest.json"))
            if found and json.loads(found[0].read_text())["total_rows"] >= 4000:
                manifest = found[0]
                break
            time.sleep(0.05)
        assert manifest is not None, "the writer produced no shards"
        time.sleep(0.13)  # land somewhere inside a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    cache = TeacherCache(tmp_path, FP, 64)
    report = cache.verify()
    assert report["ok"], report
    assert len(cache) == json.loads((cache.path / "manifest.json").read_text())["total_rows"] >= 4000
    assert len(cache) % 2000 == 0  # whole shards only
    k, v = next(cache.iter_batches())
    assert v.shape[1] == 64 and np.isfinite(v).all()


def test_corrupt_manifest_is_reported(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, FP, 8)
    (cache.path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="manifest.json"):
        TeacherCache(tmp_path, FP, 8)


def test_journaled_replies_of_a_dead_writer_become_a_shard_and_a_live_writers_are_left(tmp_path):
    """Issue 13: answers received but not yet in a shard were lost on a kill (and paid for again)."""
    import subprocess
    import sys

    from armada_ray.cache import ReplyJournal

    cache = TeacherCache(tmp_path, {"kind": "test", "model": "j"}, dim=4, dtype="float32")
    dead = subprocess.run([sys.executable, "-c", (
        "import numpy as np, os; from armada_ray.cache import ReplyJournal\n"
        f"j = ReplyJournal({str(cache.path)!r}, 'dead')\n"
        "j.append(['a', 'b'], np.ones((2, 4)))\n"
        "j._f.write('{\"keys\": [\"c\"], \"vect')\n"  # a torn last record: killed mid-write
        "j._f.flush(); os._exit(9)")], capture_output=True, text=True)
    assert dead.returncode == 9, dead.stderr
    live = ReplyJournal(cache.path, "live")
    live.append(["z"], np.zeros((1, 4)))
    assert cache.replay_journals() == 2
    assert set(cache.keys()) == {"a", "b"} and np.allclose(cache.lookup(["a"]), 1.0)
    assert not (cache.path / "journal" / "dead.jsonl").exists() and live.path.exists()
    live.close()
    assert cache.replay_journals() == 1 and "z" in cache
