"""The MLflow UI: its addresses, an ``mlflow server`` we start and stop cleanly, and ``armada ui``.

``armada ui`` (:func:`run_ui`) serves a local store on 127.0.0.1; a tracking server already has its UI, so
only its address is printed. The server runs in its own process group, so stopping it ends exactly the
processes it started (its workers included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError, redact_url_credentials
from armada_ray.tracking.store import client_for, is_http_uri, sqlite_path

UI_HOST = "127.0.0.1"
UI_PORT = 5000

# MLflow 3's UI opens in its GenAI view unless the URL (or the browser's last choice) asks for model training
TRAINING_VIEW = "?workflowType=machine_learning"


def ui_url(uri: str, experiment_id: str | None = None, run_id: str | None = None, port: int = UI_PORT) -> str:
    """The MLflow UI address for a store: the server itself, or ``armada ui`` on 127.0.0.1 for a local one."""
    base = redact_url_credentials(uri.rstrip("/")) if is_http_uri(uri) else f"http://{UI_HOST}:{port}"
    if experiment_id is None:
        return base
    if run_id is None:
        return f"{base}/#/experiments/{experiment_id}/runs{TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


@dataclass
class MlflowServer:
    """A ``mlflow server`` we started in its own process group (see :func:`start_mlflow_server`)."""

    url: str
    pid: int
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM this server's process group; SIGKILL whatever is left after ``grace_s``."""
        deadline = time.monotonic() + grace_s
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(self.pid) or self.process.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return self.process.poll()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in group ``pgid``?"""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def start_mlflow_server(
    backend_uri: str,
    artifacts_dir: str | os.PathLike[str],
    port: int,
    host: str = UI_HOST,
    workers: int = 1,
    timeout_s: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` over ``backend_uri`` (artifacts proxied from ``artifacts_dir``) and wait for
    ``/health``. It runs in a new session, so :meth:`MlflowServer.stop` ends exactly its process group.
    Its output goes to ``log_path`` (default ``<artifacts_dir>/../mlflow-server-<port>.log``)."""
    artifacts = Path(artifacts_dir).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    db = sqlite_path(backend_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    if port_in_use(host, port):
        raise OSError(f"port {port} on {host} is already in use")
    logfile = Path(log_path) if log_path is not None else artifacts.parent / f"mlflow-server-{port}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]
    with logfile.open("ab") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    server = MlflowServer(url=f"http://{host}:{port}", pid=process.pid, log_path=logfile, process=process)
    try:
        _wait_healthy(server, timeout_s)
    except BaseException:  # including Ctrl-C while waiting: never leave the server behind
        server.stop(grace_s=5)
        raise
    return server


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = server.poll()
        if code is not None:
            raise RuntimeError(
                f"mlflow server exited with code {code} before answering /health; its log {server.log_path} "
                f"ends:\n{_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"mlflow server on {server.url} did not answer /health within {timeout_s:.0f} s; see {server.log_path}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_ui(cfg: ArmadaConfig, port: int = UI_PORT) -> dict[str, Any]:
    """``armada ui``: serve the project's tracking store on 127.0.0.1:``port`` until Ctrl-C.

    A remote ``tracking.uri`` already has its UI: its address is printed and nothing is started.
    """
    uri = cfg.tracking_uri
    if is_http_uri(uri):
        print(f"MLflow UI: {uri} (the tracking server set in tracking.uri; nothing to start)", flush=True)
        return {"url": uri, "tracking_uri": uri, "started": False}
    artifacts = cfg.work_dir / "mlartifacts"
    if port_in_use(UI_HOST, port):
        raise ConfigError(f"ui: port {port} on {UI_HOST} is already in use; pick another with --port N")
    print(f"starting the MLflow UI over {uri} (artifacts {artifacts}); this takes about 10 s ...", flush=True)
    server = start_mlflow_server(uri, artifacts, port, log_path=cfg.work_dir / "mlflow-ui.log")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        experiment_url = server.url
        try:
            found = client_for(uri).get_experiment_by_name(cfg.experiment)
            if found is not None:
                experiment_url = f"{server.url}/#/experiments/{found.experiment_id}/runs{TRAINING_VIEW}"
        except Exception:  # noqa: BLE001 - only used to print a deeper link
            pass
        print(f"MLflow UI: {server.url}", flush=True)
        if experiment_url != server.url:
            print(f"experiment {cfg.experiment}: {experiment_url}", flush=True)
        print(f"(log: {server.log_path}; press Ctrl-C to stop)", flush=True)
        try:
            while server.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping the MLflow UI ...", flush=True)
        else:
            raise RuntimeError(
                f"the MLflow UI exited with code {server.poll()}; its log ends:\n{_tail(server.log_path)}"
            )
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return {"url": server.url, "experiment_url": experiment_url, "tracking_uri": uri, "log": str(server.log_path)}


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
