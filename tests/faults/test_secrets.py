"""Secrets never leak, and a tampered cache shard is caught by its checksum (issue 13).

The slow test runs two real ``armada serve-teacher`` processes on loopback (one requiring a bearer token) and
three ``armada embed`` CLI children, each with its own local Ray under a private ``RAY_TMPDIR``: a key given
through ``teacher.api_key_env``, a key inside ``teacher.endpoint``, and a wrong key. It then greps every file
the runs wrote (work dir, cache, MLflow store and artifacts, the Ray session's logs), everything they and the
servers printed, the saved ``config.yaml`` and MLflow params/tags of a run whose endpoint holds the key, and a
``ConfigError`` message (``benchmarks/fault_cases.py::secrets_check``, shared with ``benchmarks/faults.py``).

The cache tests are plain pyarrow, no Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _paths import ROOT

sys.path.insert(0, str(ROOT))

from armada_ray.cache import CacheError, TeacherCache  # noqa: E402
from benchmarks.fault_cases import CLIENT_KEY_ENV, SERVER_TOKEN_ENV, Server, child_env, secrets_check  # noqa: E402

FP = {"kind": "test", "model": "faults", "v": 1}


def _cache_with_two_shards(root: Path) -> tuple[TeacherCache, dict[str, np.ndarray]]:
    cache = TeacherCache(root, FP, 8, "float32")
    rng = np.random.default_rng(0)
    vecs = {}
    for names in (["a", "b", "c"], ["d", "e"]):
        v = rng.standard_normal((len(names), 8)).astype(np.float32)
        cache.write_shard([cache.key_for(n) for n in names], v)
        vecs.update(zip(names, v))
    assert cache.verify()["ok"]
    return cache, vecs


def _rewrite_with_other_vectors(cache: TeacherCache, shard: str) -> None:
    """A valid Parquet file with the shard's schema, metadata (its stale content checksum included) and keys,
    but other vectors: what an edit with pandas/pyarrow leaves behind. Only the manifest's sha256 differs."""
    p = cache.path / shard
    table = pq.read_table(p)
    vec = table.column("vector").combine_chunks()
    flat = vec.values.to_numpy(zero_copy_only=False).copy()
    flat[:8] += 1.0  # the first row's vector
    forged = pa.table({"key": table.column("key"),
                       "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, vec.type.value_type), 8)},
                      schema=table.schema)
    pq.write_table(forged, p, compression="zstd")


def test_a_rewritten_shard_fails_verify_naming_it(tmp_path: Path) -> None:
    cache, _ = _cache_with_two_shards(tmp_path)
    shard = json.loads((cache.path / "manifest.json").read_text())["shards"][0]["file"]
    _rewrite_with_other_vectors(cache, shard)
    report = TeacherCache(tmp_path, FP, 8, "float32").verify()
    assert not report["ok"] and report["problems"] == [f"{shard}: sha256 differs from the manifest"]


def test_a_truncated_shard_fails_verify(tmp_path: Path) -> None:
    cache, _ = _cache_with_two_shards(tmp_path)
    shard = json.loads((cache.path / "manifest.json").read_text())["shards"][1]["file"]
    p = cache.path / shard
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    report = cache.verify()
    assert not report["ok"] and report["problems"] == [f"{shard}: sha256 differs from the manifest"]


def test_reopening_a_cache_with_a_truncated_shard_names_it(tmp_path: Path) -> None:
    cache, _ = _cache_with_two_shards(tmp_path)
    shard = json.loads((cache.path / "manifest.json").read_text())["shards"][1]["file"]
    p = cache.path / shard
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CacheError, match=shard):
        TeacherCache(tmp_path, FP, 8, "float32")


def test_reading_a_rewritten_shard_is_refused(tmp_path: Path) -> None:
    cache, vecs = _cache_with_two_shards(tmp_path)
    shard = json.loads((cache.path / "manifest.json").read_text())["shards"][0]["file"]
    _rewrite_with_other_vectors(cache, shard)
    fresh = TeacherCache(tmp_path, FP, 8, "float32")  # a later process (train) opening the cache
    with pytest.raises(CacheError, match=shard):
        fresh.lookup([fresh.key_for("a")])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_keys_from_the_environment_and_the_url_never_leak(tmp_path: Path) -> None:
    token = f"sk-env-{os.urandom(8).hex()}"
    servers = [Server([f"server.token_env={SERVER_TOKEN_ENV}"], env=child_env(**{SERVER_TOKEN_ENV: token}),
                      token=token),
               Server(["server.latency_s=0.05"])]
    try:
        for s in servers:
            s.ready()
        report = secrets_check(tmp_path, *servers)
    finally:
        for s in servers:
            s.stop()
    try:
        runs = report["runs"]
        # the key really travelled: the token server answered the env-key run, and the URL-key run too
        assert runs["env-key"]["rc"] == 0 and runs["url-key"]["rc"] == 0, runs
        assert runs["url-key tune"]["rc"] == 0, runs  # the sweep (a trial, the baseline, the export) ran too
        # a wrong key is refused with the variable's name (never its value)
        assert runs["wrong-key"]["rc"] != 0 and CLIENT_KEY_ENV in " ".join(runs["wrong-key"]["stderr_tail"]), runs
        assert len(report["ray_session_logs"]) == 3, report["ray_roots"]  # every Ray session's logs were read
        places = report["places"]
        assert places[str(tmp_path / "env-key")] > 0 and places[str(tmp_path / "url-key")] > 0, places
        assert all(places[root] > 0 for root in report["ray_roots"][:3]), places
        # MLflow holds the endpoint (tags of the URL-key embed run, params of the saved config), masked
        assert report["masked_in_mlflow"] >= 2, report
        saved = (tmp_path / "saved" / "run" / "config.yaml").read_text()
        assert "user:***@api.example.com" in saved  # the endpoint is saved, masked
        assert report["leaks"] == [], report["leaks"]
    finally:
        for root in report["ray_roots"]:
            shutil.rmtree(root, ignore_errors=True)

