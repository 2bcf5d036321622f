"""Teacher fan-out against a rate-limited, faulty black-box API: how much of the limit does `armada embed` use?

Setup: `armada serve-teacher` as a subprocess on loopback (MiniLM stand-in teacher, max_length 32, one
thread) with a real token-bucket limit of R requests/s and 10 % injected faults (5 % 429 with the
limiter's Retry-After, 5 % 500/503). The rows are real tweets (task tweet_sentiment), 4 texts per request.

1. `armada embed`'s fan-out (Ray Data, 2 actors, one job-wide limiter actor at R req/s, 16 in flight):
   value = server-side admitted requests/s over the fan-out window (the dimension probe excluded) / R;
   lost_rows = unique prompts neither cached nor quarantined; duplicate_rows = texts the server answered
   more than once.
2. Ray Data LLM's `HttpRequestProcessorConfig` processor on the same rows, configured as a user would for
   this limit (2 actors, qps = R/2 each, max_retries=6, base wait 0.25 s): the same ratio (full mode: on
   the first 800 rows, since it runs at a fraction of R).
3. `armada embed` as a CLI subprocess SIGKILLed (its whole process group) once about a third of the rows
   are cached, then rerun: requeried_after_kill = rows the rerun asked for that were already cached at the
   kill (goal 0); answered_then_lost = rows the server had answered that the kill lost (re-queried).

Full: R=20, 2000 rows, saved to benchmarks/results/teacher_fanout.json. --quick: 400 rows, printed only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from armada_ray import environ  # noqa: E402
from benchmarks._common import ServeTeacher, embed_killed_midway, emit, window_rate  # noqa: E402


def task_overrides(rows: int) -> list[str]:
    dev = test = max(1, rows // 10)
    return ["task.name=tweet_sentiment", f"task.max_train={rows - dev - test}", f"task.max_dev={dev}",
            f"task.max_test={test}"]


def embed_overrides(work: Path, url: str, rate: float, rows: int) -> list[str]:
    return [f"paths.work_dir={work}", "teacher.kind=http", f"teacher.endpoint={url}", "teacher.model=teacher",
            "teacher.stand_in=true", "teacher.dim=384", f"teacher.requests_per_s={rate}", "teacher.batch_size=4",
            "teacher.max_in_flight=16", "teacher.max_retries=8", "embed.concurrency=2", "embed.batch_size=32",
            *task_overrides(rows)]


def run_ray_llm(url: str, texts: list[str], rate: float) -> dict:
    """Ray Data LLM's HTTP processor on the same requests (4 texts each)."""
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    groups = [{"texts": texts[i : i + 4]} for i in range(0, len(texts), 4)]
    config = HttpRequestProcessorConfig(
        url=f"{url}/embeddings", headers={"Content-Type": "application/json"}, qps=max(1, int(rate // 2)),
        max_retries=6, base_retry_wait_time_in_s=0.25, batch_size=16, concurrency=2,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"payload": {"model": "teacher", "input": list(row["texts"])}, "n": len(row["texts"])},
        postprocess=lambda row: {"n": row["n"], "answered": len((row.get("http_response") or {}).get("data") or [])},
    )
    t0 = time.monotonic()
    try:
        out = processor(ray.data.from_items(groups, override_num_blocks=8)).take_all()
    except Exception as exc:  # noqa: BLE001 - a failed job is a result here
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "wall_s": time.monotonic() - t0}
    answered = sum(int(r["answered"]) for r in out)
    return {"answered": answered, "lost": len(texts) - answered, "wall_s": time.monotonic() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 rows, print only")
    ap.add_argument("--rate", type=float, default=20.0, help="the server's requests/s limit R")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    rows = args.rows or (400 if args.quick else 2000)
    rate = args.rate
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from armada_ray.cache import TeacherCache, open_cache_for
    from armada_ray.config import load_config
    from armada_ray.embed import run_embed, task_prompts
    from armada_ray.ray_utils import ensure_ray
    from armada_ray.teachers.server import text_digest

    work = Path(tempfile.mkdtemp(prefix="armada-fanout-"))
    server = ServeTeacher([
        "server.model_name=teacher", "server.teacher.max_length=32", "server.teacher.stand_in=true",
        f"server.rate_limit_rps={rate}", "server.error_rate=0.05", "server.rate_limit_error_rate=0.05",
        "server.fault_seed=7",
    ])
    notes = [f"server: {server.banner}; limit R={rate:g} req/s (token bucket, burst max(1, R/4)); "
             f"injected 5% 429 + 5% 500/503; 4 texts per request; tweets from task tweet_sentiment"]
    result: dict = {"name": "teacher_fanout", "unit": "ratio", "rate_limit_rps": rate}
    try:
        ensure_ray()
        # ---------------------------------------------------------------- 1. armada embed
        cfg = load_config(None, embed_overrides(work / "a", server.url, rate, rows))
        server.reset()
        t0 = time.monotonic()
        stats = run_embed(cfg)
        wall_a = time.monotonic() - t0
        srv = server.stats(texts=True)
        times = srv["admitted_times"][1:]  # the first admitted request is the dimension probe
        achieved = window_rate(times)
        gaps = [b - a for a, b in zip(times, times[1:])]
        cache = open_cache_for(cfg)
        lost = stats["unique_prompts"] - len(cache) - stats["quarantined"]
        result.update({
            "value": round(achieved / rate, 4) if achieved else None,
            "achieved_requests_per_s": round(achieved, 3) if achieved else None,
            "rows": stats["rows"], "unique_prompts": stats["unique_prompts"], "lost_rows": lost,
            "quarantined_rows": stats["quarantined"], "duplicate_rows": srv["duplicate_rows"],
            "requests": len(times), "retries": stats["retries"], "server_429_limit": srv["rate_limited"],
            "server_injected_429": srv["injected_429"], "server_injected_5xx": srv["injected_5xx"],
            "longest_gap_s": round(max(gaps), 3) if gaps else None, "embed_wall_s": round(wall_a, 2), "fanout_window_s": round(times[-1] - times[0], 2) if times else None,
            "tokens": stats["tokens"],
        })

        # ---------------------------------------------------------------- 2. Ray Data LLM processor
        texts = sorted({r["prompt"] for r in task_prompts(cfg)[0]})
        server.reset()
        llm_texts = texts[:800]
        llm = run_ray_llm(server.url, llm_texts, rate)
        srv = server.stats(texts=True)
        llm_rate = window_rate(srv["admitted_times"])
        if "error" in llm:
            result["ray_llm_processor_ratio"] = None
            notes.append(f"Ray Data LLM HttpRequestProcessorConfig failed the job: {llm['error']}")
        else:
            result["ray_llm_processor_ratio"] = round(llm_rate / rate, 4) if llm_rate else None
            notes.append(f"Ray Data LLM HttpRequestProcessorConfig on {len(llm_texts)} rows (2 actors, qps=R/2 each, "
                         "max_retries=6, base 0.25 s): one request in flight per actor, Retry-After ignored, HTTP 500 "
                         "not retried and returned as a row holding the error body (its lost rows), no cache")
        result.update({"ray_llm_rows": len(llm_texts), "ray_llm_lost_rows": llm.get("lost"),
                       "ray_llm_duplicate_rows": srv["duplicate_rows"],
                       "ray_llm_server_429_limit": srv["rate_limited"], "ray_llm_wall_s": round(llm["wall_s"], 2)})

        # ---------------------------------------------------------------- 3. kill midway, rerun
        over = embed_overrides(work / "c", server.url, rate, rows) + ["embed.flush_every_s=1", "cache.shard_rows=64"]
        cfg_c = load_config(None, over)
        server.reset()
        env = {**environ.snapshot(), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        killed_running, cached_at_kill = embed_killed_midway(over, work / "c" / "cache",
                                                             max(64, int(rows * 0.35)), env)
        at_kill = server.stats(texts=True)["texts"]
        cache_c = open_cache_for(cfg_c)
        kept = set(cache_c.keys()) if cache_c is not None else set()
        server.reset()
        rerun = run_embed(cfg_c)
        after = server.stats(texts=True)["texts"]
        fid = rerun["fingerprint_id"]
        from armada_ray.cache import cache_key

        requeried_cached = sum(1 for p in texts if cache_key(fid, p) in kept and text_digest(p) in after)
        answered_lost = sum(1 for p in texts if text_digest(p) in at_kill and cache_key(fid, p) not in kept)
        final = open_cache_for(cfg_c)
        result.update({
            "killed_while_running": killed_running, "cached_at_kill": len(kept),
            "requeried_after_kill": requeried_cached, "answered_then_lost_in_kill": answered_lost,
            "rerun_queried": rerun["queried"], "rows_cached_after_rerun": len(final) if final else 0,
            "verify_after_kill_ok": bool(cache_c and TeacherCache.verify(cache_c)["ok"]),
        })
        notes.append("kill phase: SIGKILL of the `armada embed` process group once >= 35% of rows were cached "
                     "(flush every 1 s); requeried_after_kill counts rerun queries of rows cached at the kill")
    finally:
        server.stop()
    result["notes"] = notes
    result = {"name": result.pop("name"), "value": result.pop("value", None), "unit": result.pop("unit"), **result}
    emit(result, args.quick)


if __name__ == "__main__":
    main()
