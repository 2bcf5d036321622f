"""Shared benchmark plumbing: machine info, the final JSON line, results files, a loopback teacher server."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from armada_ray import environ

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "TOKENIZERS_PARALLELISM": "false", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}.items():
    os.environ.setdefault(_k, _v)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "date": _dt.datetime.now().isoformat(timespec="seconds")}
    versions = {}
    for name in ("torch", "ray", "transformers", "diffusers", "aiohttp", "pyarrow", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            versions[name] = None
    info["versions"] = versions
    try:
        import torch

        info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or None
    except Exception:  # noqa: BLE001
        info["gpu"] = None
    try:
        info["load_avg_at_end"] = os.getloadavg()
    except OSError:
        pass
    return info


def emit(result: dict[str, Any], quick: bool) -> None:
    """Print the result as the last stdout line; in full mode also save it with machine info."""
    result = {**result, "quick": quick}
    try:  # 2 shared cores: other people's load moves these figures, so say what it was
        result["load_avg_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if not quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        saved = {**result, "machine": machine_info()}
        (RESULTS / f"{result['name']}.json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class ServeTeacher:
    """``armada serve-teacher`` as a subprocess (its own process group), stopped by PID."""

    def __init__(self, overrides: list[str], threads: int = 1):
        self.port = free_port()
        env = {**environ.snapshot(), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "armada_ray.cli", "serve-teacher", f"server.port={self.port}", *overrides],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.banner = ""
        deadline = time.time() + 180
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("serve-teacher exited before serving")
            if line.startswith("serving "):
                self.banner = line.strip()
                break
        else:
            raise RuntimeError("serve-teacher did not start in time")
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.base = f"http://127.0.0.1:{self.port}"

    def stats(self, texts: bool = False) -> dict[str, Any]:
        return http_json(self.base + "/stats" + ("?texts=1" if texts else ""))

    def reset(self) -> None:
        http_json(self.base + "/stats/reset", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def window_rate(times: list[float]) -> float | None:
    """Requests per second over the span of the given arrival times."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def embed_killed_midway(overrides: list[str], cache_root: Path, target_rows: int, env: dict[str, str],
                        timeout_s: float = 300) -> tuple[bool, int]:
    """Start ``armada embed`` with ``overrides`` as a CLI subprocess in its own process group and SIGKILL the
    whole group once the cache under ``cache_root`` has ``target_rows`` rows (or at ``timeout_s``).
    Returns (killed while still running, rows cached at the kill)."""
    proc = subprocess.Popen([sys.executable, "-m", "armada_ray.cli", "embed", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cached = 0
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and proc.poll() is None:
            found = list(cache_root.glob("*/manifest.json"))
            if found:
                try:
                    cached = json.loads(found[0].read_text())["total_rows"]
                except (ValueError, KeyError):  # a manifest being replaced: read it at the next poll
                    pass
                if cached >= target_rows:
                    break
            time.sleep(0.05)
    finally:
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    return running, cached
