"""Teachers on real components: MiniLM (hf), a tiny random SD pipeline (diffusion), and the http client
against a real aiohttp server on loopback (the project's own server, and scripted ones for exact replies)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

import numpy as np
import pytest
from _net import free_port
from aiohttp import web

from armada_ray.config import (
    ConfigError,
    DiffusionTeacherConfig,
    HFTeacherConfig,
    HttpTeacherConfig,
    ServerConfig,
)
from armada_ray.teachers import LocalLimiter, TeacherAuthError, TeacherUnavailableError, build_teacher
from armada_ray.teachers.http import parse_duration, retry_after_hint, sanitize_endpoint
from armada_ray.teachers.server import start_server_in_thread

# ------------------------------------------------------------------------------------------ hf


@pytest.fixture(scope="module")
def minilm():
    t = build_teacher(HFTeacherConfig(model="minilm", max_length=64, stand_in=True))
    return t.load()


def test_hf_minilm_real_vectors(minilm) -> None:
    v = minilm.embed(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] == pytest.approx(0.755, abs=0.01)  # ASSETS.md sanity figures
    assert v[0] @ v[2] == pytest.approx(-0.105, abs=0.01)
    res = minilm.embed_rows(["one", "two"])
    assert res.ok.all() and res.vectors.shape == (2, 384)
    # batching and length-sorting do not change a row's vector
    alone = minilm.embed(["A man is eating food."])[0]
    np.testing.assert_allclose(alone, v[0], atol=1e-5)


def test_hf_fingerprint_without_loading_weights() -> None:
    t = build_teacher(HFTeacherConfig(model="minilm"))
    fp = t.fingerprint()
    assert t._model is None  # config + a cheap file digest only
    assert fp["kind"] == "hf" and fp["dim"] == 384 and fp["weights"] and fp["prompt_template"] == "{text}"
    assert t.fingerprint_id() == build_teacher(HFTeacherConfig(model="minilm")).fingerprint_id()
    for change in ({"pooling": "cls"}, {"layer": 3}, {"normalize": False}, {"prompt_template": "photo of {text}"}):
        assert build_teacher(HFTeacherConfig(model="minilm", **change)).fingerprint_id() != t.fingerprint_id()
    # batch size is an execution detail, not part of the recipe
    assert build_teacher(HFTeacherConfig(model="minilm", batch_size=3)).fingerprint_id() == t.fingerprint_id()
    # the compute dtype is (issue 15): CPU fp32 and GPU half-precision vectors never share a cache
    cpu = build_teacher(HFTeacherConfig(model="minilm"), device="cpu").fingerprint()
    gpu = build_teacher(HFTeacherConfig(model="minilm"), device="cuda").fingerprint()
    fp16 = build_teacher(HFTeacherConfig(model="minilm", dtype="float16"), device="cpu").fingerprint()
    assert (cpu["dtype"], gpu["dtype"], fp16["dtype"]) == ("float32", "auto-cuda", "float16")
    explicit = build_teacher(HFTeacherConfig(model="minilm", dtype="float32"), device="cpu").fingerprint()
    assert explicit == cpu  # auto on CPU is fp32: the same vectors, the same cache
    from armada_ray.config import load_config
    from armada_ray.teachers.factory import teacher_fingerprint

    gpu_embed = load_config(None, ["teacher={kind: hf, model: minilm}", "embed.num_gpus_per_actor=1"])
    assert teacher_fingerprint(gpu_embed.teacher, device=gpu_embed.embed.teacher_device)["dtype"] == "auto-cuda"


def test_hf_pooling_variants_and_layers() -> None:
    import torch

    from armada_ray.teachers.hf import pool

    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(h, right, "last").flatten().tolist() == [2.0, 5.0]  # never the pad position
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, left, "first").flatten().tolist() == [1.0, 6.0]
    assert pool(h, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(h, right, "mean").flatten().tolist() == pytest.approx([1.0, 4.5])
    t = build_teacher(HFTeacherConfig(model="minilm", pooling="last", layer=2, normalize=False, max_length=16))
    v = t.embed(["short", "a somewhat longer sentence for padding"])
    assert v.shape == (2, 384) and np.isfinite(v).all() and not np.allclose(np.linalg.norm(v, axis=1), 1.0)


# ------------------------------------------------------------------------------------ diffusion


@pytest.fixture
def one_thread():
    """Tiny convolutions on 2 shared cores run ~50x faster on one OpenMP thread (no barrier spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_diffusion_tiny_pipeline_recipe(one_thread) -> None:
    cfg = DiffusionTeacherConfig(model="tiny", image_size=32, steps=3, batch_size=2)
    t = build_teacher(cfg)
    blocks = 2  # the tiny VAE has 2 blocks: latent side = image side / 2^(blocks-1)
    assert t.dim == 4 * (32 // 2 ** (blocks - 1)) ** 2 == 1024
    assert t._pipe is None  # dim and fingerprint come from the configs
    fp = t.fingerprint()
    assert fp["recipe"].startswith("sd-txt2img") and fp["strength"] == 0.75 and fp["guidance_scale"] == 7.5
    v = t.embed(["a photo of a cat", "a dog", "a red car"])
    assert v.shape == (3, 1024) and np.isfinite(v).all() and v.std() > 0
    # per-row seeded generators: a row's vector does not depend on its batch
    np.testing.assert_allclose(t.embed(["a dog"])[0], v[1], atol=1e-4)
    assert not np.allclose(v[0], v[1])
    assert build_teacher(cfg.model_copy(update={"steps": 4})).fingerprint_id() != t.fingerprint_id()
    assert build_teacher(cfg.model_copy(update={"image_size": 64})).dim == 4 * 32 * 32


def test_diffusion_resize_on_the_device_matches_the_image_round_trip_and_batches_by_device(one_thread) -> None:
    """Issue 15: the 128-px resize stays a tensor op (no PIL round trip on one CPU); it still sees what a saved
    8-bit image holds, and lands within a couple of 8-bit levels of PIL's bicubic. The batch defaults to 32 on a
    GPU (4-8 left it mostly idle), 4 on CPU."""
    import torch
    from PIL import Image

    from armada_ray.teachers.diffusion import resize_images

    g = torch.Generator().manual_seed(0)
    pixels = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")
    ours = resize_images(pixels, 16)
    assert ours.shape == (2, 3, 16, 16) and 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0
    for i in range(2):
        u8 = (pixels[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        pil = np.asarray(Image.fromarray(u8).resize((16, 16), resample=Image.Resampling.BICUBIC), np.float32) / 255
        assert np.abs(ours[i].permute(1, 2, 0).numpy() - pil).mean() < 2.5 / 255
    assert build_teacher(DiffusionTeacherConfig(model="tiny"), device="cpu").batch_size == 4
    assert build_teacher(DiffusionTeacherConfig(model="tiny"), device="cuda").batch_size == 32
    assert build_teacher(DiffusionTeacherConfig(model="tiny", batch_size=8), device="cuda").batch_size == 8


def test_diffusion_fp16_loads_the_fp16_variant_and_falls_back_without_one(tmp_path) -> None:
    """Issue 15: an fp16 teacher reads the repository's fp16 weights (variant="fp16": half the bytes, no fp32 copy);
    a repository without them still loads."""
    import torch
    from diffusers import StableDiffusionPipeline

    from armada_ray.teachers.diffusion import build_random_pipeline, load_pipeline

    pipe = build_random_pipeline("tiny")
    pipe.save_pretrained(tmp_path / "only-fp16", variant="fp16")
    pipe.save_pretrained(tmp_path / "plain")
    loaded = load_pipeline(StableDiffusionPipeline, str(tmp_path / "only-fp16"), None, torch.float16)
    assert loaded.unet.dtype == torch.float16
    assert load_pipeline(StableDiffusionPipeline, str(tmp_path / "plain"), None, torch.float16).unet.dtype \
        == torch.float16
    with pytest.raises((OSError, ValueError)):  # fp32 asks for the default weights, which that folder lacks
        load_pipeline(StableDiffusionPipeline, str(tmp_path / "only-fp16"), None, torch.float32)


def test_diffusion_real_model_id_fails_clearly_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from armada_ray.teachers.base import TeacherError

    with pytest.raises(TeacherError, match="CompVis/stable-diffusion-v1-4.*tiny"):
        _ = build_teacher(DiffusionTeacherConfig()).dim


# ------------------------------------------------------------------------- http: the real server


@pytest.fixture(scope="module")
def server(minilm):
    h = start_server_in_thread(ServerConfig(port=0, model_name="teacher", teacher=HFTeacherConfig(model="minilm")),
                               teacher=minilm)
    yield h
    h.stop()


CLEAN = dict(rate_limit_rps=None, rate_limit_burst=None, error_rate=0.0, rate_limit_error_rate=0.0, malformed_rate=0.0,
             bad_vector_rate=0.0, latency_s=0.0, token_env=None, retry_after_s=None, fault_seed=0)


def _reset(server: Any, **kw: Any) -> None:
    server.server.reconfigure(**{**CLEAN, **kw})


def _http(url: str, **kw: Any) -> Any:
    base = dict(endpoint=url, model="teacher", batch_size=4, requests_per_s=200, max_in_flight=8,
                backoff_base_s=0.02, backoff_max_s=0.2, timeout_s=10)
    return build_teacher(HttpTeacherConfig(**{**base, **kw}))


def test_http_embeddings_match_the_local_teacher(server, minilm) -> None:
    _reset(server)
    texts = [f"the number {i} is a fine number" for i in range(10)]
    t = _http(server.url, price_per_1k_tokens=0.5)
    assert t.dim is None and t.probe().shape == (384,) and t.dim == 384
    res = t.embed_rows(texts)
    assert res.ok.all()
    np.testing.assert_allclose(res.vectors, minilm.embed(texts), atol=1e-5)
    assert res.stats["requests"] == 3 and res.stats["tokens"] > 0
    assert res.stats["cost"] == pytest.approx(res.stats["tokens"] / 1000 * 0.5)
    fp = t.fingerprint()
    assert fp["endpoint"] == server.url and "key" not in json.dumps(fp).lower()
    t.close()


def test_http_retries_5xx_and_429_from_the_real_server(server) -> None:
    _reset(server, error_rate=0.3, rate_limit_error_rate=0.2, fault_seed=3)
    t = _http(server.url, dim=384, max_retries=8, batch_size=2)
    res = t.embed_rows([f"text {i}" for i in range(40)])
    st = server.stats()
    assert res.ok.all(), res.reasons
    assert st["injected_5xx"] > 0 and st["injected_429"] > 0
    assert res.stats["retries"] == st["injected_5xx"] + st["injected_429"]
    assert st["duplicate_rows"] == 0 and st["rows"] == 40
    t.close()


def test_http_honours_the_real_rate_limit(server) -> None:
    _reset(server, rate_limit_rps=5, rate_limit_burst=1)
    t = _http(server.url, dim=384, batch_size=1, requests_per_s=1000, max_retries=20)  # over-sends on purpose
    t0 = time.monotonic()
    res = t.embed_rows([f"row {i}" for i in range(8)])
    elapsed = time.monotonic() - t0
    st = server.stats()
    assert res.ok.all() and st["rate_limited"] > 0 and st["ok_replies"] == 8
    assert elapsed >= 7 / 5 * 0.9  # 8 requests through a 5/s bucket of burst 1
    t.close()


def test_http_auth_401_is_immediate_and_never_shows_the_key(server, monkeypatch) -> None:
    monkeypatch.setenv("ARMADA_TEST_SERVER_TOKEN", "right-token")
    monkeypatch.setenv("ARMADA_TEST_CLIENT_KEY", "sk-wrong-secret-1234")
    _reset(server, token_env="ARMADA_TEST_SERVER_TOKEN")
    t = _http(server.url, dim=384, api_key_env="ARMADA_TEST_CLIENT_KEY", max_retries=5)
    with pytest.raises(TeacherAuthError) as err:
        t.embed_rows(["hello"])
    msg = str(err.value)
    assert "ARMADA_TEST_CLIENT_KEY" in msg and "401" in msg and "sk-wrong-secret-1234" not in msg
    assert server.stats()["requests"] == 1  # not retried
    monkeypatch.setenv("ARMADA_TEST_CLIENT_KEY", "right-token")
    ok = _http(server.url, dim=384, api_key_env="ARMADA_TEST_CLIENT_KEY")
    assert ok.embed_rows(["hello"]).ok.all()
    monkeypatch.delenv("ARMADA_TEST_CLIENT_KEY")
    with pytest.raises(ConfigError, match="ARMADA_TEST_CLIENT_KEY is not set"):
        _http(server.url, dim=384, api_key_env="ARMADA_TEST_CLIENT_KEY").embed_rows(["x"])
    for tt in (t, ok):
        tt.close()
    _reset(server, token_env=None)


def test_http_bad_replies_fail_rows_not_the_job(server) -> None:
    _reset(server, malformed_rate=1.0)
    t = _http(server.url, dim=384, batch_size=2)
    res = t.embed_rows(["a", "b", "c"])
    assert not res.ok.any() and all(r.startswith("malformed_reply: not JSON") for r in res.reasons)
    _reset(server, bad_vector_rate=1.0, fault_seed=1)
    res = t.embed_rows([f"row {i}" for i in range(12)])
    kinds = {r.split(":")[0] for r in res.reasons}
    assert not res.ok.any() and kinds == {"wrong_dim", "non_finite"}
    _reset(server, bad_vector_rate=0.3, fault_seed=2)
    res = t.embed_rows([f"row {i}" for i in range(12)])
    assert 0 < res.ok.sum() < 12 and server.stats()["injected_bad_vectors"] == 12 - res.ok.sum()
    t.close()
    _reset(server)


def test_http_unreachable_endpoint_is_fatal_and_clear() -> None:
    port = free_port()
    t = _http(f"http://127.0.0.1:{port}/v1", dim=4, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(TeacherUnavailableError, match=f"127.0.0.1:{port}.*unreachable.*3 attempts"):
        t.embed_rows(["x"])
    assert time.monotonic() - t0 < 5
    t.close()


# ----------------------------------------------------------------------- http: scripted replies


class Scripted:
    """A real aiohttp server on loopback that answers from a script (status, headers, body) and logs
    the arrival time of every request."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]], dim: int = 4):
        self.script, self.dim, self.arrivals = list(script), dim, []
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        body = await request.json()
        status, headers, reply = self.script.pop(0) if self.script else (200, {}, None)
        if reply is None:
            reply = {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [0.5] * self.dim}
                                                for i in range(len(body["input"]))], "usage": {"total_tokens": 3}}
        text = reply if isinstance(reply, str) else json.dumps(reply)
        return web.Response(status=status, headers=headers, text=text, content_type="application/json")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


ERR = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}


def test_http_429_retry_after_is_honoured_and_shared() -> None:
    srv = Scripted([(429, {"Retry-After": "1"}, ERR)])
    lim = LocalLimiter(requests_per_s=100, max_in_flight=4)
    a, b = _http(srv.url, dim=4), _http(srv.url, dim=4)
    a.limiter = b.limiter = lim

    async def both() -> None:
        first = asyncio.ensure_future(a.aembed_rows(["x"]))
        await asyncio.sleep(0.2)  # by now `a` got its 429 and paused the shared limiter
        t_b = time.monotonic()
        res_b = await b.aembed_rows(["y"])
        assert res_b.ok.all() and time.monotonic() - t_b >= 0.6  # b waited for a's Retry-After
        assert (await first).ok.all()

    asyncio.run(both())
    assert srv.arrivals[1] - srv.arrivals[0] >= 1.0  # the retry came after Retry-After: 1
    assert lim.snapshot()["pauses"] == 1
    srv.stop()


def test_http_malformed_shapes_and_non_retryable_4xx() -> None:
    nan = {"object": "list", "data": [{"index": 0, "embedding": [1.0, float("nan"), 0.0, 0.0]},
                                      {"index": 1, "embedding": [1.0, 2.0]},
                                      {"index": 2, "embedding": "oops"}]}
    srv = Scripted([(200, {}, nan), (200, {}, {"nothing": True}), (400, {}, {"error": {"message": "too long"}}),
                    (503, {"x-ratelimit-reset-requests": "50ms"}, ERR)])
    t = _http(srv.url, dim=4, batch_size=4)
    res = t.embed_rows(["a", "b", "c", "d"])  # row d is missing from the reply
    assert res.reasons == ["non_finite: the vector holds NaN or inf", "wrong_dim: got 2, expected 4",
                           "malformed_reply: embedding is str, not a non-empty list",
                           "malformed_reply: no embedding for this row"]
    assert t.embed_rows(["e"]).reasons == ["malformed_reply: no 'data' list"]
    res = t.embed_rows(["f"])
    assert res.reasons == ["http_400: too long"]
    assert len(srv.arrivals) == 3  # 400 not retried
    assert t.embed_rows(["g"]).ok.all()  # 503 retried after the 50 ms reset hint
    assert srv.arrivals[4] - srv.arrivals[3] >= 0.05
    t.close()
    srv.stop()


# ---------------------------------------------------------------------------------- limiter


def test_local_limiter_rate_in_flight_pause_and_tokens() -> None:
    async def run(lim: LocalLimiter, n: int, tokens: int = 0, hold: float = 0.0) -> float:
        async def one() -> None:
            await lim.acquire(tokens)
            await asyncio.sleep(hold)
            await lim.release()

        t0 = time.monotonic()
        await asyncio.gather(*[one() for _ in range(n)])
        return time.monotonic() - t0

    assert 0.45 <= asyncio.run(run(LocalLimiter(requests_per_s=20), 11)) < 1.0
    lim = LocalLimiter(max_in_flight=2)
    assert asyncio.run(run(lim, 6, hold=0.1)) >= 0.3 and lim.snapshot()["max_in_flight_seen"] == 2
    # tokens/min: 600/min = 10 tokens/s with a full bucket of 600; 3 x 205 tokens -> the third waits ~1.5 s
    t = asyncio.run(run(LocalLimiter(tokens_per_min=600), 3, tokens=205))
    assert 1.3 <= t < 3.0

    async def paused() -> float:
        lim = LocalLimiter(requests_per_s=1000)
        await lim.report_retry_after(0.4)
        t0 = time.monotonic()
        await lim.acquire()
        await lim.release()
        return time.monotonic() - t0

    assert asyncio.run(paused()) >= 0.35


def test_limiter_shared_across_threads_and_loops() -> None:
    lim = LocalLimiter(requests_per_s=20, max_in_flight=1)
    times: list[float] = []

    def worker() -> None:
        async def go() -> None:
            for _ in range(5):
                await lim.acquire()
                times.append(time.monotonic())
                await asyncio.sleep(0.01)
                await lim.release()

        asyncio.run(go())

    threads = [threading.Thread(target=worker) for _ in range(2)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(times) == 10 and time.monotonic() - t0 >= 9 / 20 * 0.9  # one budget for both
    assert lim.snapshot()["max_in_flight_seen"] == 1


def test_header_parsing_and_endpoint_sanitizing() -> None:
    assert retry_after_hint({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_hint({"retry-after": "2"}) == 2.0
    assert retry_after_hint({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 360.0
    assert retry_after_hint({}) is None
    assert parse_duration("20ms") == pytest.approx(0.02) and parse_duration("1m30s") == 90.0
    assert sanitize_endpoint("https://user:pw@api.example.com:8443/v1/?key=abc") == "https://api.example.com:8443/v1"
    assert os.environ.get("ARMADA_TEST_CLIENT_KEY") is None


def test_teachers_and_cache_import_without_ray() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None\n"
            "import armada_ray.teachers\n"
            "assert 'torch' not in sys.modules and 'aiohttp' not in sys.modules  # kinds load lazily\n"
            "import armada_ray.cache, armada_ray.teachers.hf, armada_ray.teachers.diffusion\n"
            "import armada_ray.teachers.http, armada_ray.teachers.limits, armada_ray.teachers.server\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
