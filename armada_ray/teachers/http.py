"""A black-box, OpenAI-compatible teacher API as the teacher (asyncio + aiohttp).

``api: embeddings`` POSTs ``{"model", "input": [texts]}`` to ``{endpoint}/embeddings`` and reads
``data[i].embedding``; ``api: images`` POSTs ``{"model", "prompt", "response_format": "b64_json"}`` to
``{endpoint}/images/generations`` and encodes the returned image with a local image encoder
(``teacher.image_encoder``).

Why not Ray Data LLM's ``HttpRequestProcessorConfig`` (ray 2.60, read and measured; see
``benchmarks/teacher_fanout.py``)? Its HTTP stage is close, but for a paid, rate-limited teacher it lacks:

- retries: ``max_retries`` defaults to 0, so one 429 fails the whole job; when enabled, it waits
  ``base * 2**k`` with no jitter and **ignores Retry-After** (and the ``x-ratelimit-reset-*`` headers);
- concurrency: requests are awaited one after another, so each actor has one request in flight and the
  only parallelism is the number of actors;
- limits: ``qps`` is per actor and per batch (its clock restarts with every batch), so a job-wide
  requests/s limit must be divided by hand, and there is no tokens/min budget nor a job-wide in-flight
  cap; a 429 slows down only the actor that received it;
- per-row outcomes: a non-JSON reply or an exhausted retry raises and fails the job, while an HTTP 500
  is not retried at all and comes back as a "successful" row holding the error body (measured: rows
  silently lost); there is no per-row validation (dimension, NaN) and no quarantine; 401/403 are not
  distinguished from other failures;
- bookkeeping: no token/cost accounting and no cache, so a rerun pays for every row again.

This client shares one :class:`~armada_ray.teachers.limits.Limiter` across all actors of a job, keeps
``max_in_flight`` requests in flight, retries 429/408/5xx/timeouts/connection errors with exponential
backoff and full jitter while honouring ``retry-after-ms``/``Retry-After``/``x-ratelimit-reset-*``
(and pausing every client on a 429), fails fast and clearly on 401/403 (naming the env var, never the
key), validates every row, and sums ``usage.total_tokens`` into its stats. The API key is read from the
environment variable named by ``teacher.api_key_env`` and sent only as a Bearer header: it never enters a
log line, an exception message, or the fingerprint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import json
import os
import random
import re
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from armada_ray.config import ConfigError
from armada_ray.fingerprint import fingerprint_id
from armada_ray.teachers.base import (
    FINGERPRINT_VERSION,
    EmbedResult,
    TeacherAuthError,
    TeacherError,
    TeacherUnavailableError,
    check_vector,
)
from armada_ray.teachers.limits import Limiter, limiter_for

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def sanitize_endpoint(url: str) -> str:
    """The endpoint without credentials, query or fragment, and without a trailing slash."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def parse_duration(text: str) -> float | None:
    """'1s', '6m0s', '20ms', '1.5', '0.25s' -> seconds (the x-ratelimit-reset-* formats)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def retry_after_hint(headers: Any) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, else Retry-After (seconds or HTTP date), else the
    largest x-ratelimit-reset-requests/-tokens. None when the reply says nothing usable."""
    get = headers.get
    ms = get("retry-after-ms")
    if ms:
        try:
            return min(600.0, max(0.0, float(ms) / 1000.0))
        except ValueError:
            pass
    ra = get("retry-after")
    if ra:
        try:
            return min(600.0, max(0.0, float(ra)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
                return min(600.0, max(0.0, when.timestamp() - time.time()))
            except (TypeError, ValueError):
                pass
    resets = [parse_duration(get(h)) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if get(h)]
    resets = [r for r in resets if r is not None]
    return min(600.0, max(resets)) if resets else None


def estimate_tokens(texts: list[str]) -> int:
    """A cheap upper-ish estimate for the token budget (4 characters per token, at least 1 per text)."""
    return sum(len(t) // 4 + 1 for t in texts)


class _Failed(Exception):
    """A request that will not succeed; its rows fail with ``reason`` (quarantined, not fatal)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HttpTeacher:
    kind = "http"

    def __init__(self, cfg: Any, limiter: Limiter | None = None):
        self.cfg = cfg
        self.stand_in = bool(cfg.stand_in)
        self.endpoint = sanitize_endpoint(cfg.endpoint)
        self._url_base = cfg.endpoint.strip().rstrip("/")
        self.limiter: Limiter = limiter if limiter is not None else limiter_for(cfg)
        self._dim: int | None = cfg.dim
        self._sessions: dict[int, Any] = {}
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._encoder: Any = None
        self._lock = threading.Lock()
        self.totals: dict[str, float] = {}

    # ----------------------------------------------------------------------------------- metadata
    @property
    def dim(self) -> int | None:
        return self._dim

    def fingerprint(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "v": FINGERPRINT_VERSION,
            "kind": "http",
            "endpoint": self.endpoint,
            "model": c.model,
            "api": c.api,
            "image_encoder": c.image_encoder if c.api == "images" else None,
            "prompt_template": c.prompt_template,
            "dim": c.dim,
        }

    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint())

    def describe(self) -> str:
        tag = " (STAND-IN teacher)" if self.stand_in else ""
        return f"http:{self.cfg.model}@{self.endpoint}{tag} dim={self._dim}"

    # ------------------------------------------------------------------------------------- auth
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "armada-ray"}
        name = self.cfg.api_key_env
        if name:
            key = os.environ.get(name, "")
            if not key:
                raise ConfigError(
                    f"config error: teacher.api_key_env={name!r}: the environment variable {name} is not set "
                    f"(export it with the API key; the key itself never goes into the config)"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _auth_error(self, status: int, message: str) -> TeacherAuthError:
        name = self.cfg.api_key_env
        where = f"the key in ${name}" if name else "no API key (teacher.api_key_env is unset)"
        what = "rejected the credentials" if status == 401 else "refused access"
        return TeacherAuthError(
            f"teacher endpoint {self.endpoint} {what} (HTTP {status}) for {where}: {message[:200]}. "
            f"Set {name or 'teacher.api_key_env and that variable'} to a valid key for model {self.cfg.model!r}"
        )

    # ---------------------------------------------------------------------------------- sessions
    async def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._sessions.get(id(loop))
        if entry is None or entry[1].closed or entry[0] is not loop:
            s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), trust_env=False)
            self._sessions[id(loop)] = (loop, s)
            return s
        return entry[1]

    def _run(self, coro: Any) -> Any:
        """Run a coroutine on this teacher's private event loop thread (keeps one session across calls)."""
        with self._lock:
            if self._thread_loop is None or self._thread_loop.is_closed():
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="armada-http-teacher", daemon=True)
                t.start()
                self._thread_loop, self._thread = loop, t
        return asyncio.run_coroutine_threadsafe(coro, self._thread_loop).result()

    async def aclose(self) -> None:
        """Close the session of the running loop."""
        entry = self._sessions.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()

    def close(self) -> None:
        """Close every session (each on its own loop) and stop the private loop thread."""
        for key, (loop, session) in list(self._sessions.items()):
            self._sessions.pop(key, None)
            if session.closed or loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                loop.create_task(session.close())
            elif loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)
        if self._thread_loop is not None and not self._thread_loop.is_closed():
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._thread_loop.close()
            self._thread_loop = None

    # --------------------------------------------------------------------------------- requests
    def _count(self, stats: dict[str, float], key: str, n: float = 1.0) -> None:
        stats[key] = stats.get(key, 0.0) + n

    async def _post(self, path: str, payload: dict[str, Any], tokens: int, stats: dict[str, float]) -> Any:
        """POST with retries. Returns the parsed JSON body, raises _Failed (rows fail) or TeacherError (fatal)."""
        import aiohttp

        session = await self._session()
        url = f"{self._url_base}/{path}"
        body = json.dumps(payload)
        headers = self._headers()
        cfg = self.cfg
        last = "no attempt"
        for attempt in range(cfg.max_retries + 1):
            hint: float | None = None
            await self.limiter.acquire(tokens)
            status: int | None = None
            raw = b""
            try:
                self._count(stats, "requests")
                async with session.post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    if status == 429 or status >= 500:
                        hint = retry_after_hint(resp.headers)
            except asyncio.TimeoutError:
                last, kind = f"timeout after {cfg.timeout_s:g}s", "timeouts"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                last, kind = f"connection error ({type(exc).__name__})", "connection_errors"
            except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:
                # not HTTP at all (a bad status line, broken headers): aiohttp's parser error escaped the
                # client before (issue 13's protocol-junk server); retried like a dropped connection
                last, kind = f"protocol error ({type(exc).__name__})", "protocol_errors"
            finally:
                await self.limiter.release()

            if status is None:
                self._count(stats, kind)
            elif status == 200 and not raw.strip():
                # an empty 200 is a transfer cut short (a lone status line, a chunked body stopped), never an API's
                # answer: retried like a dropped connection, not quarantined as a malformed reply
                last, kind = "connection error (empty 200 reply)", "connection_errors"
                self._count(stats, kind)
            elif status == 200:
                try:
                    return json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    self._count(stats, "malformed_replies")
                    raise _Failed(f"malformed_reply: not JSON ({raw[:40]!r})") from None
            elif status in (401, 403):
                raise self._auth_error(status, _error_message(raw))
            elif status == 404:
                raise TeacherError(
                    f"teacher endpoint {self.endpoint}/{path} answered 404 ({_error_message(raw)[:200]}); "
                    f"check teacher.endpoint and teacher.model={cfg.model!r}"
                )
            elif status in RETRYABLE_STATUS:
                last = f"HTTP {status}"
                self._count(stats, "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_other")
                if status == 429 and hint is not None and hint > 0:
                    await self.limiter.report_retry_after(hint)
            else:  # 400, 413, 422, ...: this request will not succeed as it is
                self._count(stats, "http_4xx")
                raise _Failed(f"http_{status}: {_error_message(raw)[:160]}")

            if attempt >= cfg.max_retries:
                break
            self._count(stats, "retries")
            if hint is not None:
                delay = hint * random.uniform(1.0, 1.5)  # honour the server; spread the herd that it stopped
            else:  # exponential backoff with full jitter
                delay = random.uniform(0.0, min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** attempt)))
            self._count(stats, "backoff_s", delay)
            await asyncio.sleep(delay)

        if last.startswith(("timeout", "connection", "protocol")):
            raise TeacherUnavailableError(
                f"teacher endpoint {self.endpoint} unreachable: {last} on all {cfg.max_retries + 1} attempts "
                f"(is the server running, and an OpenAI-compatible HTTP API? check teacher.endpoint)"
            )
        raise _Failed(f"gave_up: {last} after {cfg.max_retries + 1} attempts")

    async def _embeddings_request(self, texts: list[str], stats: dict[str, float]) -> list[tuple[Any, str | None]]:
        payload = {"model": self.cfg.model, "input": texts, "encoding_format": "float"}
        try:
            reply = await self._post("embeddings", payload, estimate_tokens(texts), stats)
        except _Failed as f:
            return [(None, f.reason)] * len(texts)
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            self._count(stats, "malformed_replies")
            return [(None, "malformed_reply: no 'data' list")] * len(texts)
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), (int, float)):
            self._count(stats, "tokens", float(usage["total_tokens"]))
        by_index: dict[int, Any] = {}
        for pos, item in enumerate(data):
            if isinstance(item, dict):
                idx = item.get("index", pos)
                if isinstance(idx, int):
                    by_index[idx] = item.get("embedding")
        out: list[tuple[Any, str | None]] = []
        for i in range(len(texts)):
            if i not in by_index:
                out.append((None, "malformed_reply: no embedding for this row"))
                continue
            vec, reason = check_vector(by_index[i], self._dim)
            if vec is not None and self._dim is None:
                self._dim = int(vec.shape[0])
            out.append((vec, reason))
        return out

    async def _image_request(self, text: str, stats: dict[str, float]) -> tuple[Any, str | None]:
        payload = {"model": self.cfg.model, "prompt": text, "n": 1, "response_format": "b64_json"}
        try:
            reply = await self._post("images/generations", payload, estimate_tokens([text]), stats)
        except _Failed as f:
            return None, f.reason
        try:
            b64 = reply["data"][0]["b64_json"]
            from PIL import Image

            image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
        except Exception as exc:  # noqa: BLE001 - any shape of bad reply is this row's failure
            self._count(stats, "malformed_replies")
            return None, f"malformed_reply: no decodable image ({type(exc).__name__})"
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), (int, float)):
            self._count(stats, "tokens", float(usage["total_tokens"]))
        return image, None

    async def aembed_rows(self, texts: list[str],
                          on_reply: Callable[[int, list[tuple[Any, str | None]]], None] | None = None) -> EmbedResult:
        """Embed ``texts`` with ``batch_size`` texts per request, all requests concurrently (the limiter
        decides how many are really in flight). Fatal errors (401/403/404/unreachable) raise.

        ``on_reply(start, rows)`` is called as each request's reply arrives, with the index of its first text:
        the caller journals paid answers there, before the rest of the batch is done."""
        texts = list(texts)
        stats: dict[str, float] = {}
        t0 = time.monotonic()
        if self.cfg.api == "images":
            outcomes = await self._gather([self._image_request(t, stats) for t in texts])
            rows = await self._encode_images(outcomes)
            if on_reply is not None:  # encoded locally after the replies: journaled together
                on_reply(0, rows)
        else:
            bs = self.cfg.batch_size

            async def request(start: int) -> list[tuple[Any, str | None]]:
                part = await self._embeddings_request(texts[start : start + bs], stats)
                if on_reply is not None:
                    on_reply(start, part)
                return part

            parts = await self._gather([request(i) for i in range(0, len(texts), bs)])
            rows = [r for part in parts for r in part]
        dim = self._dim or 0
        result = EmbedResult.empty(len(texts), dim)
        for i, (vec, reason) in enumerate(rows):
            if vec is not None and dim and vec.shape[0] != dim:  # dim learnt from an earlier row of this call
                vec, reason = None, f"wrong_dim: got {vec.shape[0]}, expected {dim}"
            if vec is not None:
                result.vectors[i] = vec
                result.ok[i] = True
            else:
                result.reasons[i] = reason or "failed"
        stats["rows"] = float(len(texts))
        stats["rows_ok"] = float(result.ok.sum())
        stats["elapsed_s"] = time.monotonic() - t0
        if self.cfg.price_per_1k_tokens is not None:
            stats["cost"] = stats.get("tokens", 0.0) / 1000.0 * self.cfg.price_per_1k_tokens
        result.stats = stats
        with self._lock:
            for k, v in stats.items():
                self.totals[k] = self.totals.get(k, 0.0) + v
        return result

    async def _gather(self, coros: list[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _encode_images(self, outcomes: list[tuple[Any, str | None]]) -> list[tuple[Any, str | None]]:
        images = [(i, img) for i, (img, _) in enumerate(outcomes) if img is not None]
        rows: list[tuple[Any, str | None]] = [(None, reason) for _, reason in outcomes]
        if not images:
            return rows
        loop = asyncio.get_running_loop()
        vecs = await loop.run_in_executor(None, self._image_encoder().encode, [img for _, img in images])
        for (i, _), v in zip(images, vecs):
            vec, reason = check_vector(v.tolist(), self._dim)
            if vec is not None and self._dim is None:
                self._dim = int(vec.shape[0])
            rows[i] = (vec, reason)
        return rows

    def _image_encoder(self) -> "ImageEncoder":
        if self._encoder is None:
            if not self.cfg.image_encoder:
                raise ConfigError("config error: teacher.api=images needs teacher.image_encoder (a HF vision model)")
            self._encoder = ImageEncoder(self.cfg.image_encoder)
        return self._encoder

    # --------------------------------------------------------------------------------- sync API
    def embed_rows(self, texts: list[str]) -> EmbedResult:
        return self._run(self.aembed_rows(texts))

    def embed(self, texts: list[str]) -> np.ndarray:
        res = self.embed_rows(texts)
        if not res.ok.all():
            bad = int(np.flatnonzero(~res.ok)[0])
            raise TeacherError(f"{res.n_failed} of {len(texts)} rows failed; first: row {bad}: {res.reasons[bad]}")
        return res.vectors

    async def aprobe(self, text: str = "teacher dimension probe") -> np.ndarray:
        """One small request: fails fast on a wrong endpoint/key, learns the dimension, returns the vector.

        Callers probe with a real prompt they need anyway and keep its vector, so the probe costs no extra
        teacher query. A bad *reply* (not JSON, a non-finite vector) is what a row later in the run would only be
        quarantined for, so it is asked again, up to ``PROBE_ATTEMPTS`` times, before the job is stopped (issue 13:
        one malformed first reply stopped the whole embed); fatal answers (401, unreachable) raise at once."""
        reason = ""
        for _ in range(PROBE_ATTEMPTS):
            res = await self.aembed_rows([text])
            if res.ok[0]:
                assert self._dim is not None
                return np.asarray(res.vectors[0], dtype=np.float32)
            reason = res.reasons[0]
        raise TeacherError(f"teacher endpoint {self.endpoint} probe failed {PROBE_ATTEMPTS} times: {reason}")

    def probe(self, text: str = "teacher dimension probe") -> np.ndarray:
        return self._run(self.aprobe(text))

    def __del__(self) -> None:  # best effort: stop the private loop thread
        try:
            if self._thread_loop is not None and not self._thread_loop.is_closed():
                self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        except Exception:  # noqa: BLE001
            pass


def _error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message", ""))
    except (ValueError, UnicodeDecodeError):
        pass
    return raw[:200].decode("utf-8", "replace")


PROBE_ATTEMPTS = 3


class ImageEncoder:
    """A local HF vision model turning images into vectors (CLIP image features, pooler or mean pooling)."""

    def __init__(self, name: str, device: str | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoImageProcessor.from_pretrained(name)
        self.model = AutoModel.from_pretrained(name).to(self.device).eval()

    def encode(self, images: list[Any]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            if hasattr(self.model, "get_image_features"):
                feats = self.model.get_image_features(**inputs)
                feats = getattr(feats, "pooler_output", feats)
            else:
                out = self.model(**inputs)
                pooled = getattr(out, "pooler_output", None)
                feats = pooled if pooled is not None else out.last_hidden_state.mean(1)
        return feats.float().cpu().numpy()
