"""`armada embed` on a real local Ray instance through the real loopback teacher server (MiniLM stand-in)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _net import free_port
from _paths import ROOT

from armada_ray.cache import ReplyJournal, TeacherCache, open_cache_for
from armada_ray.config import ConfigError, HFTeacherConfig, ServerConfig, load_config
from armada_ray.embed import AsyncTeacherPredictor, TeacherPredictor, embed_prompts, run_embed
from armada_ray.teachers import TeacherAuthError, build_teacher
from armada_ray.teachers.server import start_server_in_thread, text_digest

TASK = ["task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=8", "task.max_test=8"]
CLEAN = dict(rate_limit_rps=None, error_rate=0.0, rate_limit_error_rate=0.0, malformed_rate=0.0, bad_vector_rate=0.0,
             latency_s=0.0, token_env=None, fault_seed=0)


@pytest.fixture(scope="module")
def minilm():
    return build_teacher(HFTeacherConfig(model="minilm", max_length=32)).load()


@pytest.fixture(scope="module")
def server(minilm):
    h = start_server_in_thread(ServerConfig(port=0, model_name="teacher"), teacher=minilm)
    yield h
    h.stop()


def _cfg(tmp_path: Path, url: str, *extra: str) -> Any:
    return load_config(None, [f"paths.work_dir={tmp_path}", "teacher.kind=http", f"teacher.endpoint={url}",
                              "teacher.model=teacher", "teacher.batch_size=4", "teacher.requests_per_s=100",
                              "teacher.backoff_base_s=0.02", "embed.batch_size=8", "embed.concurrency=2", *TASK,
                              *extra])


def test_predictor_is_callable_without_ray(server, minilm) -> None:
    server.server.reconfigure(**CLEAN)
    batch = {"key": np.array(["k1", "k2", "k3", "k4"], dtype=object),
             "prompt": np.array(["a good film", "", "x" * 50, "a bad film"], dtype=object)}
    local = TeacherPredictor(HFTeacherConfig(model="minilm", max_length=32).model_dump(), dim=384, max_chars=40)
    out = local(batch)
    assert out["ok"].tolist() == [True, False, False, True]
    assert out["reason"][1].startswith("empty_prompt") and out["reason"][2].startswith("over_long: 50 characters")
    np.testing.assert_allclose(out["vector"][[0, 3]], minilm.embed(["a good film", "a bad film"]), atol=1e-5)
    assert json.loads(out["stats"][0])["rows"] == 2 and out["stats"][1] == ""
    cfg = _cfg(Path("/tmp"), server.url)
    remote = AsyncTeacherPredictor(cfg.teacher.model_dump(), dim=384, max_chars=40)
    out2 = asyncio.run(remote(batch))
    assert out2["ok"].tolist() == [True, False, False, True]
    np.testing.assert_allclose(out2["vector"], out["vector"], atol=1e-5)
    assert json.loads(out2["stats"][0])["requests"] == 1
    remote.teacher.close()


def test_embed_fills_the_cache_and_a_rerun_queries_nothing(ray_local, server, minilm, tmp_path: Path) -> None:
    server.server.reconfigure(**{**CLEAN, **dict(rate_limit_rps=50, error_rate=0.1, rate_limit_error_rate=0.1, fault_seed=4)})
    cfg = _cfg(tmp_path, server.url, "teacher.requests_per_s=50", "teacher.price_per_1k_tokens=0.02")
    stats = run_embed(cfg)
    served = server.stats(with_texts=True)
    assert stats["rows"] == 40 and stats["unique_prompts"] == stats["queried"] == stats["written"]
    assert stats["cache_hits"] == 0 and stats["quarantined"] == 0
    assert served["rows"] == stats["queried"]  # the dimension probe sends a real row and keeps its vector
    assert served["duplicate_rows"] == 0 and stats["retries"] == served["injected_5xx"] + served["injected_429"]
    assert stats["tokens"] > 0 and stats["cost"] == pytest.approx(stats["tokens"] / 1000 * 0.02)
    assert Path(stats["stats_path"]).is_file() and json.loads(Path(stats["stats_path"]).read_text())["written"] == 40
    # training finds every prompt through the same prompt function and key
    from armada_ray.tasks import load_task
    from armada_ray.teachers.prompts import teacher_prompt

    data = load_task(cfg.task)
    prompts = [teacher_prompt(cfg.teacher, data.spec, ex) for ex in data.train + data.dev + data.test]
    cache = open_cache_for(cfg)
    assert cache is not None and cache.path == Path(stats["cache_path"]) and cache.verify()["ok"]
    np.testing.assert_allclose(cache.lookup([cache.key_for(p) for p in prompts[:5]]), minilm.embed(prompts[:5]),
                               atol=2e-3)
    # rerun: nothing sent, not even the probe
    before = server.stats()["requests"]
    again = run_embed(cfg)
    assert again["queried"] == 0 and again["cache_hits"] == 40 and server.stats()["requests"] == before


def test_embed_quarantines_bad_rows_and_dedupes(ray_local, server, tmp_path: Path) -> None:
    server.server.reconfigure(**{**CLEAN, **dict(malformed_rate=0.15, bad_vector_rate=0.15, fault_seed=11)})
    cfg = _cfg(tmp_path, server.url, "teacher.dim=384", "embed.max_chars=120")
    texts = [f"sentence number {i} about films" for i in range(40)]
    rows = [{"uid": f"a{i}", "prompt": t} for i, t in enumerate(texts)]
    rows += [{"uid": f"b{i}", "prompt": t} for i, t in enumerate(texts[:10])]  # same text in a second "task"
    rows += [{"uid": "e1", "prompt": ""}, {"uid": "e2", "prompt": "   "}, {"uid": "long", "prompt": "z" * 500}]
    stats = embed_prompts(cfg, rows, log=lambda s: None)
    by = stats["quarantined_by_reason"]
    assert by["empty_prompt"] == 2 and by["over_long"] == 1
    assert by.get("malformed_reply", 0) > 0 and by.get("wrong_dim", 0) + by.get("non_finite", 0) > 0
    assert stats["unique_prompts"] == 43 and stats["queried"] == 40
    assert stats["written"] + stats["quarantined"] - 3 == 40
    served = server.stats()
    assert served["duplicate_rows"] == 0  # the repeated texts were queried once
    cache = TeacherCache.open_existing(cfg.cache_root, build_teacher(cfg.teacher).fingerprint())
    q = cache.quarantined()
    assert len(q) == stats["quarantined"] and {r["reason"].split(":")[0] for r in q} >= {"empty_prompt", "over_long"}
    assert all(len(r["prompt_preview"]) <= 160 for r in q)
    # a clean rerun re-queries only what failed
    server.server.reconfigure(**CLEAN)
    again = embed_prompts(cfg, rows, log=lambda s: None)
    assert again["queried"] == 40 - stats["written"] and again["written"] == again["queried"]
    assert again["quarantined"] == 3 and len(cache.quarantined()) == stats["quarantined"] + 3


def test_auth_failure_keeps_the_cache(ray_local, server, tmp_path: Path, monkeypatch) -> None:
    server.server.reconfigure(**CLEAN)
    cfg = _cfg(tmp_path, server.url, "teacher.dim=384")
    embed_prompts(cfg, [{"prompt": "first text"}], log=lambda s: None)
    monkeypatch.setenv("ARMADA_EMBED_SERVER_TOKEN", "good")
    monkeypatch.setenv("ARMADA_EMBED_KEY", "sk-bad-9999")
    server.server.reconfigure(token_env="ARMADA_EMBED_SERVER_TOKEN")
    bad = _cfg(tmp_path, server.url, "teacher.dim=384", "teacher.api_key_env=ARMADA_EMBED_KEY")
    with pytest.raises(TeacherAuthError, match="ARMADA_EMBED_KEY") as err:
        embed_prompts(bad, [{"prompt": "first text"}, {"prompt": "second text"}], log=lambda s: None)
    assert "sk-bad-9999" not in str(err.value)
    monkeypatch.delenv("ARMADA_EMBED_KEY")
    with pytest.raises(ConfigError, match="ARMADA_EMBED_KEY"):
        embed_prompts(bad, [{"prompt": "second text"}], log=lambda s: None)
    cache = TeacherCache.open_existing(cfg.cache_root, build_teacher(cfg.teacher).fingerprint())
    assert len(cache) == 1 and cache.verify()["ok"]
    server.server.reconfigure(**CLEAN)


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "armada_ray.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.slow
def test_cli_exit_codes_for_unreachable_and_bad_config(tmp_path: Path) -> None:
    port = free_port()
    r = _cli(["embed", f"paths.work_dir={tmp_path}", "teacher.kind=http", f"teacher.endpoint=http://127.0.0.1:{port}/v1",
              "teacher.max_retries=1", "teacher.backoff_base_s=0.01", *TASK])
    assert r.returncode == 1, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "unreachable" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("cache/*/shard-*"))
    r = _cli(["embed", f"paths.work_dir={tmp_path}", "teacher.kind=http", "teacher.requests_per_s=0"])
    assert r.returncode == 2 and "teacher.requests_per_s" in r.stderr


@pytest.mark.slow
def test_a_killed_job_keeps_finished_shards(ray_local, server, tmp_path: Path) -> None:
    server.server.reconfigure(**{**CLEAN, **dict(latency_s=0.25)})
    args = [f"paths.work_dir={tmp_path}", "teacher.kind=http", f"teacher.endpoint={server.url}", "teacher.model=teacher",
            "teacher.batch_size=2", "teacher.requests_per_s=20", "teacher.max_in_flight=4", "embed.batch_size=4",
            "embed.flush_every_s=0.5", "cache.shard_rows=8", "task.name=pang_lee_polarity"]
    proc = subprocess.Popen([sys.executable, "-m", "armada_ray.cli", "embed", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            found = list(tmp_path.glob("cache/*/manifest.json"))
            if found and json.loads(found[0].read_text())["total_rows"] >= 24:
                manifest = found[0]
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert manifest is not None, "the job wrote no shard before the deadline"
    at_kill = server.stats(with_texts=True)["texts"]
    cfg = load_config(None, args)
    cache = open_cache_for(cfg)
    assert cache is not None and cache.verify()["ok"]
    kept = set(cache.keys())
    assert 24 <= len(kept) < 200
    killed_journals = list(cache.path.glob("journal/*.jsonl"))
    journaled = 0
    for j in killed_journals:
        with open(j) as fh:
            journaled += len(ReplyJournal.read(fh, cache.dim)[0])
    server.server.reconfigure(**CLEAN)
    stats = run_embed(cfg)
    # the journals hold what was answered but not yet in a shard (issue 13): the rerun asks none of it again
    assert journaled > 0 and stats["cache_hits"] >= len(kept) and stats["queried"] == 200 - stats["cache_hits"]
    after = server.stats(with_texts=True)["texts"]
    answered_twice = sum(1 for c in after.values() if c > 1)
    in_flight = 4 * 2  # teacher.max_in_flight requests of teacher.batch_size texts were on the wire at the kill
    assert answered_twice <= in_flight, (answered_twice, journaled)
    assert not any(j.exists() for j in killed_journals)  # replayed into a shard, then dropped
    fid = cache.fingerprint_id
    from armada_ray.tasks import load_task
    from armada_ray.teachers.prompts import teacher_prompt

    data = load_task(cfg.task)
    prompts = {teacher_prompt(cfg.teacher, data.spec, ex) for ex in data.train + data.dev + data.test}
    requeried_cached = [p for p in prompts if TeacherCache.key_for(cache, p) in kept and text_digest(p) in after]
    assert requeried_cached == []  # nothing already cached was asked again
    answered_then_lost = [p for p in prompts if text_digest(p) in at_kill and after.get(text_digest(p), 0) > 1]
    assert len(answered_then_lost) <= in_flight
    assert open_cache_for(cfg).stats()["rows"] == 200 and fid == stats["fingerprint_id"]
