"""The OpenAI-compatible teacher server: wire format of replies and errors, bearer token, fault injection,
a responsive /health while the teacher works, the images route, and the CLI subprocess stopped by PID."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _net import free_port
from _paths import ROOT

from armada_ray.config import DiffusionTeacherConfig, HFTeacherConfig, HttpTeacherConfig, ServerConfig
from armada_ray.teachers import build_teacher
from armada_ray.teachers.server import start_server_in_thread


def call(url: str, body: Any = None, token: str | None = None, raw: bytes | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, headers, text = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, dict(e.headers), e.read()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text.decode("utf-8", "replace")


def assert_openai_error(body: Any, type_: str, code: str | None = None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


@pytest.fixture(scope="module")
def minilm():
    return build_teacher(HFTeacherConfig(model="minilm", stand_in=True)).load()


@pytest.fixture
def server(minilm):
    h = start_server_in_thread(ServerConfig(port=0, model_name="minilm-stand-in"), teacher=minilm)
    yield h
    h.stop()


def test_embeddings_wire_format(server, minilm) -> None:
    status, headers, body = call(server.url + "/embeddings", {"model": "minilm-stand-in", "input": ["a cat", "a dog"]})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body["object"] == "list" and body["model"] == "minilm-stand-in"
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "embedding" for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), minilm.embed(["a cat", "a dog"]),
                               atol=1e-5)
    # a single string, no model field, base64 encoding (what the official client asks for by default)
    status, _, one = call(server.url + "/embeddings", {"input": "a cat", "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and len(one["data"]) == 1
    np.testing.assert_allclose(vec, body["data"][0]["embedding"], atol=1e-6)
    status, _, models = call(server.url + "/models")
    assert status == 200 and models["object"] == "list" and models["data"][0]["id"] == "minilm-stand-in"
    assert models["data"][0]["object"] == "model" and models["data"][0]["armada"]["stand_in"] is True
    status, _, health = call(server.url.replace("/v1", "/health"))
    assert status == 200 and health["status"] == "ok" and health["dim"] == 384


def test_errors_in_openai_format(server) -> None:
    url = server.url + "/embeddings"
    status, _, body = call(url, raw=b"{not json")
    assert status == 400
    assert_openai_error(body, "invalid_request_error")
    status, _, body = call(url, {"model": "gpt-nope", "input": "x"})
    assert status == 404
    assert_openai_error(body, "invalid_request_error", "model_not_found")
    status, _, body = call(url, {"input": [1, 2, 3]})
    assert status == 400 and body["error"]["param"] == "input"
    status, _, body = call(url, {"input": ["ok", ""]})
    assert status == 400 and body["error"]["param"] == "input"
    status, _, body = call(url, {"input": "x", "encoding_format": "int8"})
    assert status == 400 and body["error"]["param"] == "encoding_format"
    status, _, body = call(server.url + "/models/gpt-nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = call(server.url + "/images/generations", {"prompt": "a cat"})
    assert status == 404  # an embedding teacher serves no images


def test_request_limits_answer_413_and_400_quickly(minilm) -> None:
    """Issue 13: a 5 MB body took 8.7 s of CPU and 10,000 inputs 47 s; one client could starve the others."""
    h = start_server_in_thread(ServerConfig(port=0, max_body_bytes=1 << 20, max_inputs_per_request=64,
                                            max_input_chars=1000), teacher=minilm)
    try:
        url = h.url + "/embeddings"
        t0 = time.perf_counter()
        status, _, body = call(url, {"input": ["x" * 900] * 2000})  # ~1.8 MB
        assert status == 413 and "server.max_body_bytes" in body["error"]["message"]
        assert_openai_error(body, "invalid_request_error")
        status, _, body = call(url, {"input": ["a cat"] * 65})
        assert status == 400 and body["error"]["param"] == "input" and "at most 64" in body["error"]["message"]
        status, _, body = call(url, {"input": ["a cat", "y" * 1001]})
        assert status == 400 and "'input[1]' has 1001 characters" in body["error"]["message"]
        assert time.perf_counter() - t0 < 10
        status, _, body = call(url, {"input": ["a cat"] * 64})  # at the limits: answered
        assert status == 200 and len(body["data"]) == 64
    finally:
        h.stop()


def test_bearer_token(server, monkeypatch) -> None:
    monkeypatch.setenv("ARMADA_SERVER_TEST_TOKEN", "tok-123")
    server.server.reconfigure(token_env="ARMADA_SERVER_TEST_TOKEN")
    url = server.url + "/embeddings"
    status, _, body = call(url, {"input": "x"})
    assert status == 401
    assert_openai_error(body, "invalid_request_error")
    status, _, body = call(url, {"input": "x"}, token="wrong")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert call(server.url + "/models")[0] == 401
    assert call(url, {"input": "x"}, token="tok-123")[0] == 200
    assert call(server.url.replace("/v1", "/health"))[0] == 200  # health needs no token
    assert server.stats()["unauthorized"] == 3


def test_rate_limit_and_fault_injection(server) -> None:
    url = server.url + "/embeddings"
    server.server.reconfigure(rate_limit_rps=2, rate_limit_burst=1)
    assert call(url, {"input": "x"})[0] == 200
    status, headers, body = call(url, {"input": "x"})
    assert status == 429
    assert_openai_error(body, "requests", "rate_limit_exceeded")
    assert int(headers["Retry-After"]) >= 1 and 0 < int(headers["retry-after-ms"]) <= 500
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    server.server.reconfigure(rate_limit_rps=None, error_rate=1.0)
    statuses = {call(url, {"input": "x"})[0] for _ in range(8)}
    assert statuses <= {500, 503} and statuses
    status, _, body = call(url, {"input": "x"})
    assert_openai_error(body, "server_error")
    server.server.reconfigure(error_rate=0.0, rate_limit_error_rate=1.0, retry_after_s=2.0)
    status, headers, _ = call(url, {"input": "x"})
    assert status == 429 and headers["Retry-After"] == "2" and headers["retry-after-ms"] == "2000"
    server.server.reconfigure(rate_limit_error_rate=0.0, malformed_rate=1.0)
    status, _, body = call(url, {"input": "x"})
    assert status == 200 and isinstance(body, str) and "<html>" in body
    server.server.reconfigure(malformed_rate=0.0, bad_vector_rate=1.0)
    _, _, body = call(url, {"input": ["a", "b", "c", "d", "e", "f"]})
    lens = {len(d["embedding"]) for d in body["data"]}
    nans = sum(any(isinstance(x, float) and np.isnan(x) for x in d["embedding"]) for d in body["data"])
    assert (192 in lens) or nans > 0
    st = server.stats()
    assert st["injected_bad_vectors"] == 6 and st["requests"] == 1


def test_health_stays_responsive_while_the_teacher_works(server) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    done: dict[str, float] = {}

    def heavy() -> None:
        call(server.url + "/embeddings", {"input": [f"{i} {words}" for i in range(32)]})
        done["embed"] = time.monotonic()

    th = threading.Thread(target=heavy)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert call(server.url.replace("/v1", "/health"))[0] == 200
    done["health"] = time.monotonic()
    th.join(120)
    assert done["health"] - t0 < 1.0
    assert done["health"] < done["embed"]  # answered while the embedding was still running


def test_cli_subprocess_started_and_stopped_by_pid(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "armada_ray.cli", "serve-teacher", f"server.port={port}", "server.model_name=mini",
         "server.teacher.max_length=32", "server.teacher.stand_in=true", "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
        banner = lines[-1] if lines else ""
        assert banner.strip() == (
            f"serving mini (STAND-IN teacher: hf:minilm, dim 384) at http://127.0.0.1:{port}/v1"), "".join(lines)
        status, _, body = call(f"http://127.0.0.1:{port}/v1/embeddings", {"model": "mini", "input": ["hello"]})
        assert status == 200 and len(body["data"][0]["embedding"]) == 384
        t = build_teacher(HttpTeacherConfig(endpoint=f"http://127.0.0.1:{port}/v1", model="mini"))
        assert t.embed(["hello", "world"]).shape == (2, 384)
        t.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["url"] == f"http://127.0.0.1:{port}/v1" and last["rows"] == 3 and last["stand_in"] is True
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_images_route_and_the_images_client(tmp_path: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc_dir = tmp_path / "tiny-vit"
        torch.manual_seed(0)
        ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32)).save_pretrained(enc_dir)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(enc_dir)
        teacher_cfg = DiffusionTeacherConfig(model="tiny", image_size=32, steps=2, stand_in=True)
        with start_server_in_thread(ServerConfig(port=0, model_name="painter", teacher=teacher_cfg)) as h:
            status, _, body = call(h.url + "/images/generations", {"model": "painter", "prompt": "a red cat"})
            assert status == 200 and len(body["data"]) == 1
            import io

            from PIL import Image

            img = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
            assert img.size == (32, 32)
            client = build_teacher(HttpTeacherConfig(endpoint=h.url, model="painter", api="images",
                                                     image_encoder=str(enc_dir), dim=24))
            res = client.embed_rows(["a red cat", "a blue dog"])
            assert res.ok.all() and res.vectors.shape == (2, 24) and not np.allclose(res.vectors[0], res.vectors[1])
            assert client.fingerprint()["image_encoder"] == str(enc_dir)
            client.close()
    finally:
        torch.set_num_threads(threads)
