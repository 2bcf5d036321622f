"""A real OpenAI-compatible teacher server (aiohttp.web) hosting any local teacher.

``armada serve-teacher`` puts ``server.teacher`` (an hf or diffusion teacher) behind

- ``POST /v1/embeddings``: ``{"model", "input": str | [str], "encoding_format": "float" | "base64"}`` ->
  ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model",
  "usage": {"prompt_tokens", "total_tokens"}}``;
- ``POST /v1/images/generations`` (diffusion teachers): ``{"prompt"}`` -> ``{"created", "data":
  [{"b64_json"}]}``, the txt2img image after the recipe's resize;
- ``GET /v1/models``, ``GET /health`` (no auth), ``GET /stats`` (counters; ``?texts=1`` adds per-text
  query counts, which the fan-out benchmark uses to count duplicate teacher queries) and
  ``POST /stats/reset``.

Errors use OpenAI's wire format, ``{"error": {"message", "type", "param", "code"}}`` with the same status
codes (401 invalid_api_key, 404 model_not_found, 400 invalid_request_error, 429 rate_limit_exceeded with
``Retry-After``/``retry-after-ms``/``x-ratelimit-*`` headers, 500/503 server_error), so the official
``openai`` client works against it unchanged. It binds 127.0.0.1 by default; with ``server.token_env``
clients must send ``Authorization: Bearer <that variable's value>``.

Fault injection for testing clients: ``rate_limit_rps`` (a real token-bucket limit), and the injected
fractions ``rate_limit_error_rate`` (429), ``error_rate`` (500/503), ``malformed_rate`` (a non-JSON 200),
``bad_vector_rate`` (rows answered with NaN or a wrong-length vector), plus ``latency_s``. The rate limit
is checked first; injected faults apply to admitted requests.

The teacher runs on a one-thread executor (``run_in_executor``), so ``/health`` answers while it works.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from armada_ray.config import ConfigError
from armada_ray.teachers.factory import build_teacher


def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class TokenBucket:
    """Server-side request limit: ``rate`` tokens/s, ``burst`` capacity; a request takes one or is refused."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.level, self.t = burst, time.monotonic()
        self.lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now

    def take(self) -> tuple[bool, float]:
        """(admitted, seconds until the next token would be available)."""
        with self.lock:
            now = time.monotonic()
            self._refill(now)
            if self.level >= 1.0:
                self.level -= 1.0
                return True, 0.0
            return False, (1.0 - self.level) / self.rate

    def wait(self) -> float:
        with self.lock:
            self._refill(time.monotonic())
            return max(0.0, (1.0 - self.level) / self.rate)

    @property
    def remaining(self) -> int:
        return int(self.level)


@dataclass
class ServerStats:
    started: float = field(default_factory=time.time)
    requests: int = 0  # every POST to /v1/embeddings or /v1/images/generations
    admitted: int = 0  # passed auth and the rate limit
    rate_limited: int = 0  # real 429s from the limit
    unauthorized: int = 0
    injected_429: int = 0
    injected_5xx: int = 0
    injected_malformed: int = 0
    injected_bad_vectors: int = 0
    bad_requests: int = 0
    ok_replies: int = 0
    rows: int = 0  # rows answered in 200 replies
    tokens: int = 0
    first_admitted: float | None = None
    last_admitted: float | None = None
    texts: Counter = field(default_factory=Counter)  # text_digest(text) -> times answered in a 200 reply
    admitted_times: list = field(default_factory=list)  # monotonic time of every admitted request

    def as_dict(self, with_texts: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("texts", "admitted_times")}
        out["unique_texts"] = len(self.texts)
        out["duplicate_rows"] = sum(c - 1 for c in self.texts.values() if c > 1)
        span = (self.last_admitted or 0) - (self.first_admitted or 0)
        out["admitted_span_s"] = span
        out["admitted_per_s"] = (self.admitted - 1) / span if span > 0 and self.admitted > 1 else None
        if with_texts:
            out["texts"] = dict(self.texts)
            out["admitted_times"] = list(self.admitted_times)
        return out


def text_digest(text: str) -> str:
    """The key of a text in the server's per-text counters (80 bits of sha256: small, collision-free in practice)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class TeacherServer:
    """The aiohttp application around one teacher (built lazily from ``server_cfg.teacher``)."""

    def __init__(self, server_cfg: Any, teacher: Any = None):
        self.cfg = server_cfg
        self.teacher = teacher if teacher is not None else build_teacher(server_cfg.teacher)
        self.reconfigure()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armada-teacher")
        # one client must not starve the others (issue 13): bodies, inputs and input lengths are bounded
        self.app = web.Application(client_max_size=server_cfg.max_body_bytes)
        self.app.add_routes([
            web.get("/health", self.health),
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model}", self.models),
            web.post("/v1/embeddings", self.embeddings),
            web.post("/v1/images/generations", self.image_generations),
            web.get("/stats", self.get_stats),
            web.post("/stats/reset", self.reset_stats),
        ])

    # --------------------------------------------------------------------------------- helpers
    def reconfigure(self, **changes: Any) -> None:
        """Change fault-injection / limit settings of a running server (tests, benchmarks); resets stats."""
        if changes:
            self.cfg = type(self.cfg).model_validate({**self.cfg.model_dump(), **changes})
        self.rng = random.Random(self.cfg.fault_seed)
        self.bucket = None
        if self.cfg.rate_limit_rps:
            burst = self.cfg.rate_limit_burst or max(1.0, self.cfg.rate_limit_rps / 4.0)
            self.bucket = TokenBucket(self.cfg.rate_limit_rps, burst)
        self.stats = ServerStats()

    def warm_up(self) -> None:
        """Load the model now (not on the first request) and run one tiny query."""
        if hasattr(self.teacher, "load"):
            self.teacher.load()
        if self.teacher.kind == "hf":
            self.teacher.embed(["warm up"])

    def banner(self, url: str) -> str:
        t = self.teacher
        fp = t.fingerprint()
        what = f"{fp['kind']}:{fp.get('model')}, dim {t.dim}"
        if getattr(t, "stand_in", False):
            return f"serving {self.cfg.model_name} (STAND-IN teacher: {what}) at {url}"
        return f"serving {self.cfg.model_name} ({what}) at {url}"

    def _token(self) -> str | None:
        if not self.cfg.token_env:
            return None
        return os.environ.get(self.cfg.token_env) or None

    def _auth(self, request: web.Request) -> web.Response | None:
        token = self._token()
        if self.cfg.token_env and token is None:
            return openai_error(500, f"server misconfigured: ${self.cfg.token_env} is not set", "server_error")
        if token is None:
            return None
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self.stats.unauthorized += 1
            return openai_error(
                401, "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", "invalid_request_error", None)
        if header[len("Bearer "):].strip() != token:
            self.stats.unauthorized += 1
            return openai_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return None

    def _rate_headers(self, wait: float) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, math.ceil(wait))) if wait > 0 else "0",
            "retry-after-ms": str(int(round(wait * 1000))),
            "x-ratelimit-limit-requests": str(self.cfg.rate_limit_rps or 0),
            "x-ratelimit-remaining-requests": str(self.bucket.remaining if self.bucket else 0),
            "x-ratelimit-reset-requests": f"{wait:.3f}s",
        }

    async def _gate(self, request: web.Request) -> web.Response | None:
        """Auth, the real rate limit, then the injected faults; None = go on and answer."""
        self.stats.requests += 1
        denied = self._auth(request)
        if denied is not None:
            return denied
        if self.bucket is not None:
            ok, wait = self.bucket.take()
            if not ok:
                self.stats.rate_limited += 1
                return openai_error(
                    429, f"Rate limit reached for {self.cfg.model_name} on requests per second (RPS): "
                    f"Limit {self.cfg.rate_limit_rps:g}. Please try again in {wait * 1000:.0f}ms.",
                    "requests", "rate_limit_exceeded", headers=self._rate_headers(wait))
        now = time.monotonic()
        self.stats.admitted += 1
        self.stats.first_admitted = self.stats.first_admitted or now
        self.stats.last_admitted = now
        self.stats.admitted_times.append(now)
        if self.cfg.latency_s:
            await asyncio.sleep(self.cfg.latency_s)
        draw = self.rng.random()
        c = self.cfg
        if draw < c.rate_limit_error_rate:
            self.stats.injected_429 += 1
            wait = c.retry_after_s if c.retry_after_s is not None else (self.bucket.wait() if self.bucket else 0.0)
            return openai_error(
                429, "Rate limit reached (injected). Please try again later.", "requests", "rate_limit_exceeded",
                headers=self._rate_headers(wait))
        draw -= c.rate_limit_error_rate
        if draw < c.error_rate:
            self.stats.injected_5xx += 1
            if self.rng.random() < 0.5:
                return openai_error(500, "The server had an error while processing your request. Sorry about that!",
                                    "server_error")
            return openai_error(503, "The engine is currently overloaded, please try again later.", "server_error")
        draw -= c.error_rate
        if draw < c.malformed_rate:
            self.stats.injected_malformed += 1
            return web.Response(status=200, text="<html><body>502 upstream hiccup</body></html>",
                                content_type="text/html")
        return None

    async def _json_body(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        limit = self.cfg.max_body_bytes
        too_large = openai_error(413, f"The request body is larger than this server accepts ({limit} bytes; "
                                      "server.max_body_bytes): send fewer or shorter inputs per request.",
                                 "invalid_request_error")
        if request.content_length is not None and request.content_length > limit:
            self.stats.bad_requests += 1
            return None, too_large
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            self.stats.bad_requests += 1
            return None, too_large
        except (ValueError, UnicodeDecodeError):
            self.stats.bad_requests += 1
            return None, openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not isinstance(body, dict):
            self.stats.bad_requests += 1
            return None, openai_error(400, "The request body must be a JSON object.", "invalid_request_error")
        model = body.get("model")
        if model is not None and model != self.cfg.model_name:
            self.stats.bad_requests += 1
            return None, openai_error(
                404, f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error", "model_not_found")
        return body, None

    # ------------------------------------------------------------------------------------ routes
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok", "model": self.cfg.model_name, "stand_in": bool(getattr(self.teacher, "stand_in", False)),
            "dim": self.teacher.dim, "kind": self.teacher.kind,
        })

    async def models(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        card = {
            "id": self.cfg.model_name, "object": "model", "created": int(self.stats.started), "owned_by": "armada-ray",
            "armada": {"fingerprint": self.teacher.fingerprint(), "dim": self.teacher.dim,
                       "stand_in": bool(getattr(self.teacher, "stand_in", False))},
        }
        if "model" in request.match_info:
            if request.match_info["model"] != self.cfg.model_name:
                return openai_error(404, f"The model `{request.match_info['model']}` does not exist.",
                                    "invalid_request_error", "model_not_found")
            return web.json_response(card)
        return web.json_response({"object": "list", "data": [card]})

    async def embeddings(self, request: web.Request) -> web.Response:
        early = await self._gate(request)
        if early is not None:
            return early
        body, err = await self._json_body(request)
        if err is not None:
            return err
        assert body is not None
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            self.stats.bad_requests += 1
            return openai_error(400, "'input' must be a non-empty string or array of strings (token arrays are "
                                "not supported by this server).", "invalid_request_error", param="input")
        if any(not t for t in texts):
            self.stats.bad_requests += 1
            return openai_error(400, "'input' cannot contain empty strings.", "invalid_request_error", param="input")
        if len(texts) > self.cfg.max_inputs_per_request:
            self.stats.bad_requests += 1
            return openai_error(400, f"'input' has {len(texts)} texts; at most {self.cfg.max_inputs_per_request} per "
                                "request (server.max_inputs_per_request).", "invalid_request_error", param="input")
        long = next((i for i, t in enumerate(texts) if len(t) > self.cfg.max_input_chars), None)
        if long is not None:
            self.stats.bad_requests += 1
            return openai_error(400, f"'input[{long}]' has {len(texts[long])} characters; at most "
                                f"{self.cfg.max_input_chars} (server.max_input_chars).", "invalid_request_error",
                                param="input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            self.stats.bad_requests += 1
            return openai_error(400, f"encoding_format {fmt!r}: allowed float, base64", "invalid_request_error",
                                param="encoding_format")
        loop = asyncio.get_running_loop()
        try:
            vectors, tokens = await loop.run_in_executor(self.executor, self._embed, texts)
        except Exception as exc:  # noqa: BLE001 - the teacher failed: an OpenAI-style 500, server stays up
            return openai_error(500, f"teacher error: {type(exc).__name__}: {exc}", "server_error")
        data = []
        for i, vec in enumerate(vectors):
            if self.cfg.bad_vector_rate and self.rng.random() < self.cfg.bad_vector_rate:
                self.stats.injected_bad_vectors += 1
                vec = np.full_like(vec, np.nan) if self.rng.random() < 0.5 else vec[: max(1, len(vec) // 2)]
            emb: Any = (base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode() if fmt == "base64"
                        else [float(x) for x in vec])
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._count_ok(texts, tokens)
        reply = {"object": "list", "data": data, "model": self.cfg.model_name,
                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return web.Response(text=json.dumps(reply), content_type="application/json")

    async def image_generations(self, request: web.Request) -> web.Response:
        early = await self._gate(request)
        if early is not None:
            return early
        body, err = await self._json_body(request)
        if err is not None:
            return err
        assert body is not None
        if not hasattr(self.teacher, "images"):
            return openai_error(404, f"The model `{self.cfg.model_name}` does not generate images.",
                                "invalid_request_error", "model_not_found")
        prompt = body.get("prompt")
        n = body.get("n", 1)
        if not isinstance(prompt, str) or not prompt or not isinstance(n, int) or not 1 <= n <= 10:
            self.stats.bad_requests += 1
            return openai_error(400, "'prompt' must be a non-empty string and 'n' 1..10.", "invalid_request_error",
                                param="prompt")
        loop = asyncio.get_running_loop()
        try:
            images = await loop.run_in_executor(self.executor, self.teacher.images, [prompt] * n)
        except Exception as exc:  # noqa: BLE001
            return openai_error(500, f"teacher error: {type(exc).__name__}: {exc}", "server_error")
        data = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data.append({"b64_json": base64.b64encode(buf.getvalue()).decode()})
        tokens = len(prompt) // 4 + 1
        self._count_ok([prompt], tokens)
        return web.json_response({"created": int(time.time()), "data": data,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors = np.asarray(self.teacher.embed(texts), dtype=np.float32)
        if hasattr(self.teacher, "count_tokens"):
            tokens = self.teacher.count_tokens(texts)
        else:
            tokens = sum(len(t) // 4 + 1 for t in texts)
        return vectors, int(tokens)

    def _count_ok(self, texts: list[str], tokens: int) -> None:
        self.stats.ok_replies += 1
        self.stats.rows += len(texts)
        self.stats.tokens += tokens
        for t in texts:
            self.stats.texts[text_digest(t)] += 1

    async def get_stats(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        return web.json_response(self.stats.as_dict(with_texts=request.query.get("texts") in ("1", "true")))

    async def reset_stats(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        self.stats = ServerStats()
        return web.json_response({"status": "reset"})


# --------------------------------------------------------------------------------- running it


class ServerHandle:
    """A server running on its own event-loop thread (tests, the demo, benchmarks)."""

    def __init__(self, server: TeacherServer, host: str, port: int, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, runner: web.AppRunner):
        self.server, self.host, self.port = server, host, port
        self._loop, self._thread, self._runner = loop, thread, runner

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stats(self, with_texts: bool = False) -> dict[str, Any]:
        return self.server.stats.as_dict(with_texts=with_texts)

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self.server.executor.shutdown(wait=False)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server_in_thread(server_cfg: Any, teacher: Any = None, warm_up: bool = True) -> ServerHandle:
    """Start the server on a background thread (``server_cfg.port`` 0 = any free port); returns when it
    accepts connections."""
    server = TeacherServer(server_cfg, teacher)
    if warm_up:
        server.warm_up()
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def _run() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner = web.AppRunner(server.app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, server_cfg.host, server_cfg.port, reuse_address=True)
            loop.run_until_complete(site.start())
            ready["runner"] = runner
            ready["port"] = runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            ready["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=_run, name="armada-teacher-server", daemon=True)
    thread.start()
    started.wait(60)
    if "error" in ready:
        raise RuntimeError(f"teacher server could not start on {server_cfg.host}:{server_cfg.port}: {ready['error']}")
    return ServerHandle(server, server_cfg.host, ready["port"], loop, thread, ready["runner"])


async def _serve(server: TeacherServer, host: str, port: int, stop: asyncio.Event) -> int:
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"config error: server.port={port}: cannot listen on {host}:{port} ({exc.strerror})") from None
    actual = runner.addresses[0][1]
    print(server.banner(f"http://{host}:{actual}/v1"), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return actual


def run_server(cfg: Any) -> dict[str, Any]:
    """``armada serve-teacher``: serve until SIGINT/SIGTERM, then report what was served."""
    s = cfg.server
    if s.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: server.host={s.host} exposes the teacher beyond this machine"
              + ("" if s.token_env else " without a bearer token (set server.token_env)"), file=sys.stderr)
    if s.token_env and not os.environ.get(s.token_env):
        raise ConfigError(f"config error: server.token_env={s.token_env!r}: the environment variable is not set")
    try:
        server = TeacherServer(s)
    except ConfigError as exc:  # the teacher section sits under server. here: name the key the user wrote
        raise ConfigError([p.replace("teacher.", "server.teacher.", 1) if p.startswith("teacher.") else p
                           for p in exc.problems]) from None
    print(f"loading teacher {server.teacher.fingerprint().get('model')} ...", flush=True)
    server.warm_up()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await _serve(server, s.host, s.port, stop)

    port = asyncio.run(main())
    server.executor.shutdown(wait=False)
    stats = server.stats.as_dict()
    return {"url": f"http://{s.host}:{port}/v1", "model": s.model_name, "stand_in": bool(server.teacher.stand_in),
            "requests": stats["requests"], "rows": stats["rows"], "rate_limited": stats["rate_limited"]}
