"""``armada embed``: the Ray Data teacher fan-out into the content-addressed cache.

1. Load the task (all splits) and build every example's prompt: the paper's prompt (text fields,
   lower-cased, joined) with ``teacher.prompt_template`` applied (``teachers/prompts.py``, the same
   function training uses to look vectors up).
2. Dedupe prompts, drop those already cached, quarantine the unusable ones (empty, over
   ``embed.max_chars``) without sending them.
3. ``ray.data.from_items(rows).map_batches(TeacherPredictor, compute=ActorPoolStrategy(size=
   embed.concurrency), num_gpus=embed.num_gpus_per_actor)``: local teachers (hf, diffusion) load once
   per actor (on a GPU when given one); the http teacher runs an async predictor whose requests of one
   batch are in flight together, all actors drawing on ONE job-wide limiter (an async Ray actor holding
   the request/token buckets and the in-flight cap).
4. The driver consumes the output as it streams and writes cache shards every ``cache.shard_rows`` rows
   or ``embed.flush_every_s`` seconds, so a job killed midway keeps what it finished; failed rows go to
   ``quarantine.jsonl`` with their reason. A fatal teacher error (401/403, unreachable endpoint) stops the
   job after flushing everything already answered.
5. The run's figures are printed, saved as ``embed_stats.json`` in the cache folder and returned.

``TeacherPredictor`` is a plain class: calling it on one batch needs no Ray (tests do that).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from armada_ray.cache import ReplyJournal, TeacherCache, cache_key, dataset_view
from armada_ray.config import (
    ArmadaConfig,
    ConfigError,
    DiffusionTeacherConfig,
    HFTeacherConfig,
    HttpTeacherConfig,
)
from armada_ray.teachers.base import TeacherError
from armada_ray.teachers.factory import build_teacher
from armada_ray.teachers.limits import LocalLimiter
from armada_ray.teachers.prompts import teacher_prompt

_TEACHER_CFG = {"hf": HFTeacherConfig, "diffusion": DiffusionTeacherConfig, "http": HttpTeacherConfig}


def teacher_cfg_from_dict(data: dict[str, Any]) -> Any:
    return _TEACHER_CFG[data["kind"]].model_validate(data)


def reason_class(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "unknown"


def precheck(prompt: str, max_chars: int) -> str | None:
    """Why a prompt must not be sent (None when it may)."""
    if not prompt or not prompt.strip():
        return "empty_prompt: no text after building the prompt"
    if len(prompt) > max_chars:
        return f"over_long: {len(prompt)} characters > embed.max_chars={max_chars}"
    return None


# ------------------------------------------------------------------------------------ predictor


class TeacherPredictor:
    """One batch ``{"key", "prompt"}`` -> ``{"key", "vector" [B, D], "ok", "reason", "stats"}``.

    ``stats`` holds the batch's counters as JSON on its first row ("" elsewhere), so summing survives
    any re-batching Ray Data does. Rows that cannot be sent, or whose reply is bad (wrong dimension,
    NaN/inf, malformed), come back with ``ok=False`` and a reason; fatal teacher errors raise.
    """

    def __init__(self, teacher_cfg: dict[str, Any], dim: int, max_chars: int, limiter: Any = None,
                 device: str | None = None, journal_dir: str | None = None):
        self.teacher_cfg = teacher_cfg_from_dict(teacher_cfg) if isinstance(teacher_cfg, dict) else teacher_cfg
        # every good reply is fsynced here before it is handed on (cache.ReplyJournal): a kill loses none
        self.journal = ReplyJournal(journal_dir) if journal_dir else None
        self.dim = int(dim)
        self.max_chars = int(max_chars)
        self.teacher = build_teacher(self.teacher_cfg, limiter=limiter, device=device)
        if getattr(self.teacher, "_dim", "n/a") is None:  # http teacher without teacher.dim: the probed one
            self.teacher._dim = self.dim
        if hasattr(self.teacher, "load"):  # local model: load and warm up once per actor, before any batch
            self.teacher.load()
            self.teacher.embed(["warm up"])

    def _split(self, batch: dict[str, Any]) -> tuple[list[str], list[str], list[int], list[str | None]]:
        keys = [str(k) for k in batch["key"]]
        prompts = [str(p) for p in batch["prompt"]]
        reasons = [precheck(p, self.max_chars) for p in prompts]
        send = [i for i, r in enumerate(reasons) if r is None]
        return keys, prompts, send, reasons

    def _assemble(self, keys: list[str], send: list[int], reasons: list[str | None], result: Any,
                  started: float, journaled: bool = False) -> dict[str, Any]:
        n = len(keys)
        vectors = np.zeros((n, self.dim), np.float32)
        ok = np.zeros(n, bool)
        out_reasons = [r or "" for r in reasons]
        if result is not None:
            for j, i in enumerate(send):
                if result.ok[j]:
                    vec = result.vectors[j]
                    if vec.shape[0] != self.dim:
                        out_reasons[i] = f"wrong_dim: got {vec.shape[0]}, expected {self.dim}"
                    elif not np.isfinite(vec).all():
                        out_reasons[i] = "non_finite: the vector holds NaN or inf"
                    else:
                        vectors[i] = vec
                        ok[i] = True
                else:
                    out_reasons[i] = result.reasons[j] or "failed"
        if self.journal is not None and ok.any() and not journaled:
            self.journal.append([keys[i] for i in np.flatnonzero(ok)], vectors[ok])
        stats = dict(result.stats) if result is not None else {}
        stats["busy_s"] = time.monotonic() - started
        stats["t_start"] = time.time() - stats["busy_s"]  # wall clock: min/max across actors, not summed
        stats["t_end"] = time.time()
        stats_col = [""] * n
        if n:
            stats_col[0] = json.dumps(stats)
        return {"key": np.array(keys, dtype=object), "vector": vectors, "ok": ok,
                "reason": np.array(out_reasons, dtype=object), "stats": np.array(stats_col, dtype=object)}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        keys, prompts, send, reasons = self._split(batch)
        result = self.teacher.embed_rows([prompts[i] for i in send]) if send else None
        return self._assemble(keys, send, reasons, result, started)

    def __del__(self) -> None:
        if getattr(self, "journal", None) is not None:
            self.journal.close()
        close = getattr(getattr(self, "teacher", None), "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort at actor teardown
                pass


class AsyncTeacherPredictor(TeacherPredictor):
    """The http teacher's predictor: Ray Data runs several batches of one actor concurrently."""

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        started = time.monotonic()
        keys, prompts, send, reasons = self._split(batch)
        sent_keys = [keys[i] for i in send]

        def journal(start: int, rows: list[tuple[Any, str | None]]) -> None:
            """Each request's good vectors, fsynced as its reply arrives (not when the whole batch is done)."""
            good = [(sent_keys[start + j], vec) for j, (vec, _) in enumerate(rows) if vec is not None
                    and vec.shape[0] == self.dim and np.isfinite(vec).all()]
            if good and self.journal is not None:
                self.journal.append([k for k, _ in good], np.stack([v for _, v in good]))

        result = await self.teacher.aembed_rows([prompts[i] for i in send], on_reply=journal) if send else None
        return self._assemble(keys, send, reasons, result, started, journaled=True)


# ------------------------------------------------------------------------- shared Ray limiter


def make_ray_limiter(cfg_teacher: HttpTeacherConfig, name: str | None = None) -> tuple[Any, "RayLimiter"]:
    """One async actor holding the job's request/token buckets and in-flight cap; returns (actor, client)."""
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class LimiterActor:
        def __init__(self, rps: float, tpm: float | None, max_in_flight: int):
            self.lim = LocalLimiter(rps, tpm, max_in_flight)

        async def acquire(self, tokens: int = 0) -> None:
            await self.lim.acquire(tokens)

        async def release(self) -> None:
            await self.lim.release()

        async def report_retry_after(self, seconds: float) -> None:
            await self.lim.report_retry_after(seconds)

        async def snapshot(self) -> dict[str, Any]:
            return self.lim.snapshot()

    opts: dict[str, Any] = {}
    if name:
        opts["name"] = name
    actor = LimiterActor.options(**opts).remote(cfg_teacher.requests_per_s, cfg_teacher.tokens_per_min,
                                                cfg_teacher.max_in_flight)
    return actor, RayLimiter(actor)


class RayLimiter:
    """The :class:`~armada_ray.teachers.limits.Limiter` protocol over the shared limiter actor."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def acquire(self, tokens: int = 0) -> None:
        await self.handle.acquire.remote(tokens)

    async def release(self) -> None:
        self.handle.release.remote()  # fire and forget: calls from one caller arrive in order

    async def report_retry_after(self, seconds: float) -> None:
        self.handle.report_retry_after.remote(seconds)


# ------------------------------------------------------------------------------------- driver


def task_prompts(cfg: ArmadaConfig) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Every example of every split as ``{"uid", "split", "prompt"}`` plus a summary of the task."""
    # lazy: driver-only; the teacher actors import this module for TeacherPredictor and need no task registry
    # (~25 ms)
    from armada_ray.tasks import load_task
    from armada_ray.tasks.base import write_skipped

    data = load_task(cfg.task)
    skipped = write_skipped(data, cfg.work_dir)
    if skipped is not None:
        print(f"embed: {len(data.skipped)} source rows of {data.spec.name} skipped; each with its file, row, field "
              f"and reason in {skipped}", flush=True)
    rows = []
    for split in ("train", "dev", "test", "transfer"):
        for ex in data.split(split):
            rows.append({"uid": ex.uid, "split": split, "prompt": teacher_prompt(cfg.teacher, data.spec, ex)})
    return rows, {"task": data.spec.name, "splits": data.sizes()}


def _open_cache(cfg: ArmadaConfig, teacher: Any) -> TeacherCache:
    """Create the cache folder of a teacher that has none yet (its dim known or probed by now)."""
    if teacher.dim is None:
        raise ConfigError("config error: teacher.dim is unset and the endpoint was not probed to learn it")
    return TeacherCache(cfg.cache_root, teacher.fingerprint(), int(teacher.dim), cfg.cache.dtype)


def embed_prompts(cfg: ArmadaConfig, rows: list[dict[str, str]], *, log: Callable[[str], None] = print,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill the cache for ``rows`` (dicts with "prompt", optional "uid"); returns the run's stats."""
    t_start = time.monotonic()
    teacher = build_teacher(cfg.teacher, device=cfg.embed.teacher_device)
    is_http = cfg.teacher.kind == "http"
    fid = teacher.fingerprint_id()
    stand_in = " (STAND-IN teacher)" if cfg.teacher.stand_in else ""
    log(f"embed: teacher {cfg.teacher.kind}:{cfg.teacher.model}{stand_in}, fingerprint {fid}")

    # ---- plan: dedupe, drop cached, pre-quarantine
    unique: dict[str, dict[str, str]] = {}
    for r in rows:
        unique.setdefault(r["prompt"], r)
    max_chars = cfg.embed.max_chars
    pre_bad = {p: precheck(p, max_chars) for p in unique}
    sendable = [p for p, why in pre_bad.items() if why is None]

    existing = TeacherCache.open_existing(cfg.cache_root, teacher.fingerprint())
    if existing is not None:
        # replies a killed run had received but not yet written; its actors may take seconds to die
        recovered = existing.replay_journals(wait_s=cfg.embed.journal_wait_s)
        if recovered:
            log(f"embed: recovered {recovered} answered rows from the journals of a run that was stopped")
    keys = {p: cache_key(fid, p) for p in unique}
    cached = {p for p in unique if existing is not None and keys[p] in existing}
    need_query = any(p not in cached for p in sendable)
    probe_ok = False
    probe_vec: tuple[str, np.ndarray] | None = None
    if is_http and (need_query or (existing is None and teacher.dim is None and unique)):
        # fail fast (401/403/404/unreachable) before starting Ray, learn dim if unset; the probe sends a
        # prompt we need anyway and its vector is cached below, so it costs no extra teacher query
        first = next((p for p in sendable if p not in cached), None)
        try:
            vec = teacher.probe(first) if first is not None else teacher.probe()
        finally:
            teacher.close()
        probe_ok = True
        if first is not None and np.isfinite(vec).all():
            probe_vec = (first, vec)
    cache = existing if existing is not None else _open_cache(cfg, teacher)
    if probe_vec is not None and probe_vec[1].shape == (cache.dim,) and cache.encodable(probe_vec[1][None]).all():
        cache.write_shard([keys[probe_vec[0]]], probe_vec[1][None])
        cached.add(probe_vec[0])
    probed = 1 if probe_vec is not None and probe_vec[0] in cached else 0
    if cache.dtype != cfg.cache.dtype:
        raise ConfigError(f"config error: cache.dtype={cfg.cache.dtype}: the cache {cache.path} stores "
                          f"{cache.dtype}; set cache.dtype={cache.dtype} or use another cache.dir")
    bad_rows = [{"key": keys[p], "uid": unique[p].get("uid"), "prompt": p, "reason": why}
                for p, why in pre_bad.items() if why is not None and p not in cached]
    todo = [{"key": keys[p], "prompt": p} for p in sendable if p not in cached]
    reasons: Counter = Counter(reason_class(r["reason"]) for r in bad_rows)
    cache.quarantine(bad_rows)
    log(f"embed: {len(rows)} rows, {len(unique)} unique prompts, {len(cached)} cached, {len(todo)} to query, "
        f"{len(bad_rows)} quarantined before sending -> {cache.path}")

    totals: Counter = Counter()
    written = 0
    failed_rows = 0
    fanout_s = 0.0
    limiter_snapshot: dict[str, Any] | None = None
    busy_span = 0.0
    if todo:
        # lazy: Ray and its helpers only when there is something to fan out
        import ray

        from armada_ray.ray_utils import ensure_ray, unwrap_ray_error

        ensure_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        limiter_actor = None
        kwargs: dict[str, Any] = {"teacher_cfg": cfg.teacher.model_dump(mode="json"), "dim": cache.dim,
                                  "max_chars": max_chars, "journal_dir": str(cache.path)}
        if is_http:
            limiter_actor, kwargs["limiter"] = make_ray_limiter(cfg.teacher, name=f"armada-limiter-{uuid.uuid4().hex[:8]}")
        else:  # the device its fingerprint (dtype) was computed for
            kwargs["device"] = cfg.embed.teacher_device
        predictor = AsyncTeacherPredictor if is_http else TeacherPredictor
        bs = cfg.embed.batch_size
        # about one batch per block: outputs stream back batch by batch, so shards follow the work closely
        n_blocks = max(1, min(math.ceil(len(todo) / bs), 4096))
        pool = min(cfg.embed.concurrency, n_blocks)  # no idle actors for a handful of rows
        ds = ray.data.from_items(todo, override_num_blocks=n_blocks)
        ds = ds.map_batches(
            predictor, fn_constructor_kwargs=kwargs, batch_size=bs, batch_format="numpy",
            # http: several blocks per actor at once, so one batch waiting on a backoff never idles the actor
            compute=ray.data.ActorPoolStrategy(size=pool, max_concurrent_calls_per_actor=4 if is_http else None),
            num_gpus=cfg.embed.num_gpus_per_actor or None, num_cpus=0.5 if is_http else 1,
        )
        buf_keys: list[str] = []
        buf_vecs: list[np.ndarray] = []
        last_flush = time.monotonic()
        done = 0

        def flush() -> None:
            nonlocal buf_keys, buf_vecs, written, last_flush
            if buf_keys:
                before = len(cache)
                cache.write_shard(buf_keys, np.concatenate(buf_vecs))
                written += len(cache) - before
                buf_keys, buf_vecs = [], []
            last_flush = time.monotonic()

        prompt_of = {t["key"]: t["prompt"] for t in todo}
        uid_of = {t["key"]: unique[t["prompt"]].get("uid") for t in todo}
        t_lo, t_hi = math.inf, -math.inf
        t_fan = time.monotonic()
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for s in out["stats"]:
                    if s:
                        st = json.loads(s)
                        t_lo = min(t_lo, st.pop("t_start", t_lo))
                        t_hi = max(t_hi, st.pop("t_end", t_hi))
                        totals.update({k: float(v) for k, v in st.items()})
                ok = np.asarray(out["ok"], bool)
                vecs = np.asarray(out["vector"], np.float32)
                good = ok.copy()
                if ok.any():
                    enc = cache.encodable(vecs[ok])
                    good[np.flatnonzero(ok)[~enc]] = False
                bad = []
                for i in np.flatnonzero(~good):
                    why = str(out["reason"][i]) or f"{cache.dtype}_overflow: value beyond {cache.dtype} range"
                    key = str(out["key"][i])
                    bad.append({"key": key, "uid": uid_of.get(key), "prompt": prompt_of.get(key, ""), "reason": why})
                    reasons[reason_class(why)] += 1
                failed_rows += len(bad)
                cache.quarantine(bad)
                if good.any():
                    buf_keys.extend(str(k) for k in out["key"][good])
                    buf_vecs.append(vecs[good])
                done += len(ok)
                if len(buf_keys) >= cfg.cache.shard_rows or time.monotonic() - last_flush >= cfg.embed.flush_every_s:
                    flush()
                    log(f"embed: {done}/{len(todo)} rows answered, {written} written, {failed_rows} quarantined")
        except Exception as exc:
            flush()  # keep everything already answered
            cause = unwrap_ray_error(exc)
            kept = f"(kept {written} new vectors; {len(cache)} in {cache.path})"
            if isinstance(cause, (TeacherError, ConfigError)):
                raise type(cause)(f"{cause} {kept}") from None
            raise RuntimeError(f"embed failed: {type(cause).__name__}: {cause} {kept}") from None
        finally:
            if limiter_actor is not None:
                try:
                    limiter_snapshot = ray.get(limiter_actor.snapshot.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - stats only
                    limiter_snapshot = None
                ray.kill(limiter_actor)
        flush()
        cache.replay_journals()  # finished writers' journals: their rows are in shards now, so this only tidies
        fanout_s = time.monotonic() - t_fan
        busy_span = t_hi - t_lo if t_hi > t_lo else 0.0
        if todo and written == 0 and failed_rows == len(todo):
            top = ", ".join(f"{k} x{v}" for k, v in reasons.most_common(3))
            raise TeacherError(f"the teacher failed every one of {len(todo)} rows ({top}); see "
                               f"{cache.path / 'quarantine.jsonl'}")

    wall = time.monotonic() - t_start
    requests = totals.get("requests", 0.0) + (1 if probe_ok else 0)
    cost = totals.get("cost")
    if cost is None and is_http and cfg.teacher.price_per_1k_tokens is not None:
        cost = totals.get("tokens", 0.0) / 1000.0 * cfg.teacher.price_per_1k_tokens
    stats: dict[str, Any] = {
        **(extra or {}),
        "teacher": f"{cfg.teacher.kind}:{cfg.teacher.model}",
        "stand_in": bool(cfg.teacher.stand_in),
        "fingerprint_id": fid,
        "cache_path": str(cache.path),
        "rows": len(rows),
        "unique_prompts": len(unique),
        "cache_hits": len(cached) - probed,
        "queried": len(todo) + probed,  # the probe row is one of the queried rows
        "written": written + probed,
        "quarantined": int(sum(reasons.values())),
        "quarantined_by_reason": dict(reasons),
        "requests": int(requests),
        "retries": int(totals.get("retries", 0)),
        "http_429": int(totals.get("http_429", 0)),
        "http_5xx": int(totals.get("http_5xx", 0)),
        "tokens": int(totals.get("tokens", 0)),
        "cost": cost,
        "achieved_requests_per_s": (totals.get("requests", 0.0) / busy_span) if busy_span > 0 and is_http else None,
        "rows_per_s": (len(todo) / busy_span) if busy_span > 0 else None,
        "teacher_busy_s": round(busy_span, 3),
        "fanout_s": round(fanout_s, 3),
        "wall_s": round(wall, 3),
        "cache_rows": len(cache),
        "limiter": limiter_snapshot,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = cache.write_stats(stats)
    stats["stats_path"] = str(out)
    log(f"embed: done: {written} new vectors, {stats['cache_hits']} cache hits, {stats['quarantined']} quarantined "
        f"{dict(reasons) or ''}, {stats['requests']} requests, {stats['retries']} retries, {stats['tokens']} tokens"
        + (f", cost {cost:.4f}" if cost is not None else "") + f", {wall:.1f}s")
    log(f"embed: cache {cache.path} ({len(cache)} vectors); stats {out}")
    return stats


def run_embed(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada embed``: load the task, embed every prompt not yet cached, report."""
    rows, summary = task_prompts(cfg)
    print(f"embed: task {summary['task']} {summary['splits']}", flush=True)
    stats = embed_prompts(cfg, rows, log=lambda s: print(s, flush=True), extra=summary)
    return {**stats, **_track_embed(cfg, stats)}


def _track_embed(cfg: ArmadaConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """Record the embed job as an MLflow run (stats as metrics, the cache as dataset input); best effort:
    a tracking problem never costs an embedding job that has already paid for its queries."""
    from armada_ray.tracking import KIND_EMBED, RunTracker, standard_tags  # lazy: driver-only, as in task_prompts

    try:
        tracker = RunTracker.start(cfg, run_name=f"embed-{cfg.task.name}", kind=KIND_EMBED,
                                   tags=standard_tags(cfg, stats["fingerprint_id"]), local_dir=Path(stats["cache_path"]))
    except ConfigError as exc:
        print(f"embed: warning: not tracked in MLflow ({exc})", flush=True)
        return {}
    tracker.log_params({"task.name": cfg.task.name, "teacher.kind": cfg.teacher.kind, "teacher.model": cfg.teacher.model,
                        "embed.concurrency": cfg.embed.concurrency})
    tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                        step=0)
    tracker.log_cache_dataset(dataset_view(stats["cache_path"]))
    tracker.end("FINISHED")
    return {"mlflow_run_id": tracker.run_id}
