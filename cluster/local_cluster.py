"""A multi-node Ray cluster on one machine (loopback), that stops only what it started.

Each node is a separate ``ray start`` (head, then ``--address`` for every worker node) launched under its
own session (``setsid``: the ``ray start`` pid becomes the session id and process group of every daemon it
spawns), with its own ``--temp-dir``, its own ports (free ones, picked here), ``--num-cpus``, a custom
resource naming the node (``armada_node_<i>: 1``, plus any ``resources`` you give), a small object store and
``--disable-usage-stats``. The PIDs, process groups and ports go into a state file (``cluster.json``) so a
later process can stop the cluster.

Stopping never uses ``ray stop`` (it ends every Ray process of the user, NOTES.md) nor a broad ``pkill``:
worker nodes first, then the head; each node's session (its process group plus any member that moved to
another group) gets SIGTERM, and whatever is still alive after a grace period gets SIGKILL (the head's
``gcs_server`` ignores SIGTERM for over 15 s, NOTES.md).

Authentication (Ray >= 2.59 enables token auth by default, and CLI clients only send the token with
``RAY_AUTH_MODE=token`` set): ``auth="token"`` (the default) writes a fresh random token to
``<state dir>/auth_token`` (mode 0600) and starts every node with ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` pointing at it; :meth:`LocalCluster.env` is the environment a client
(``ray job submit``, ``ray status``, a driver) needs. ``auth="disabled"`` starts without auth (anyone who
can reach the GCS port can run code: keep such a cluster short-lived).

Note: Ray binds the GCS on all interfaces and may replace ``--node-ip-address=127.0.0.1`` by the host's
address (NOTES.md); :attr:`LocalCluster.address` is whatever the head reported.

Library use (tests)::

    with LocalCluster(num_workers=1, cpus_per_node=1) as c:   # head + 1 worker node
        subprocess.run(["ray", "job", "submit", "--address", c.dashboard_url, "--", "python", "x.py"],
                       env=c.env())

Command line::

    python cluster/local_cluster.py start --workers 1 --cpus 1 --state-dir /tmp/armada-cluster
    python cluster/local_cluster.py status --state-dir /tmp/armada-cluster
    python cluster/local_cluster.py stop --state-dir /tmp/armada-cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from armada_ray import environ

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
_PORT_FLAGS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
_HEAD_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port")


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (the venv's, not whatever is first on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command is not installed in this environment")
    return found


def node_ip_address() -> str:
    """The address Ray will give this machine's nodes (it replaces ``--node-ip-address=127.0.0.1``)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (bound to port 0 together, then released)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class Node:
    role: str                 # "head" or "worker-<i>"
    index: int
    pid: int                  # pid of the `ray start` that was made a session leader: sid == pgid == pid
    temp_dir: str
    ports: dict[str, int]
    num_cpus: float
    num_gpus: int
    resources: dict[str, float]
    log: str                  # stdout+stderr of `ray start`
    started_s: float = 0.0
    stopped: bool = False


@dataclass
class LocalCluster:
    """Head + ``num_workers`` worker nodes on this machine. See the module docstring."""

    num_workers: int = 1
    cpus_per_node: float = 1
    head_cpus: float | None = None
    gpus_per_node: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    state_dir: str | None = None
    auth: str = "token"
    object_store_mb: int = 200
    extra_env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    stop_grace_s: float = 8.0

    nodes: list[Node] = field(default_factory=list, init=False)
    address: str | None = field(default=None, init=False)
    dashboard_url: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.auth not in ("token", "disabled"):
            raise ValueError(f"auth={self.auth!r}: allowed token, disabled")
        # short paths: Ray puts unix sockets under the temp dir (AF_UNIX paths are limited to 107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="armada-rc-", dir="/tmp"))
        self.state_path = Path(self.state_dir or self.root).resolve()
        self.state_path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------ environment
    def env(self) -> dict[str, str]:
        """Environment for clients of this cluster (``ray job submit``, ``ray status``, drivers)."""
        env = environ.snapshot()  # not dict(os.environ): library threads change it concurrently
        env.update(self._auth_env())
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # the venv's bin first, so `armada` and `ray` resolve in job entrypoints as they do here
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.address:
            env["RAY_ADDRESS"] = self.address
        return env

    def _auth_env(self) -> dict[str, str]:
        if self.auth == "disabled":
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.state_path / TOKEN_FILE)}

    def _node_env(self, gcs_address: str) -> dict[str, str]:
        env = self.env()
        # Every process of the cluster (drivers, Train controllers, their state-API clients) is pinned to this
        # cluster: with RAY_ADDRESS unset, Ray's state API finds every GCS on the machine by `ps` and fails with
        # "Found multiple active Ray instances" when another Ray instance runs beside this one.
        env["RAY_ADDRESS"] = gcs_address
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------------------ start
    def start(self) -> "LocalCluster":
        if self.auth == "token":
            token = self.state_path / TOKEN_FILE
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        try:
            self._start_node(0)
            for i in range(1, self.num_workers + 1):
                self._start_node(i)
            self.wait_for_nodes(self.num_workers + 1)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self) -> Node:
        """Start one more worker node (e.g. a replacement after a node was killed)."""
        node = self._start_node(max(n.index for n in self.nodes) + 1)
        return node

    def _start_node(self, index: int) -> Node:
        head = index == 0
        role = "head" if head else f"worker-{index}"
        flags = (_HEAD_PORT_FLAGS if head else ()) + _PORT_FLAGS
        ports = dict(zip(flags, free_ports(len(flags))))
        temp_dir = self.root / f"n{index}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        cpus = self.head_cpus if head and self.head_cpus is not None else self.cpus_per_node
        resources = {f"armada_node_{index}": 1.0, **self.resources}
        cmd = [ray_executable(), "start", "--disable-usage-stats", f"--temp-dir={temp_dir}",
               f"--num-cpus={int(cpus) if float(cpus).is_integer() else cpus}", f"--num-gpus={self.gpus_per_node}",
               f"--resources={json.dumps(resources)}", "--node-ip-address=127.0.0.1",
               f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
               "--min-worker-port=0", "--max-worker-port=0", "--log-style=record"]
        if head:
            cmd += ["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        else:
            cmd += [f"--address={self.address}"]
        cmd += [f"--{flag}={port}" for flag, port in ports.items()]
        log = self.state_path / f"{role}.ray-start.log"
        expected = self.address if not head else f"{node_ip_address()}:{ports['port']}"
        t0 = time.monotonic()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._node_env(expected), start_new_session=True)
        node = Node(role=role, index=index, pid=proc.pid, temp_dir=str(temp_dir), ports=ports, num_cpus=cpus,
                    num_gpus=self.gpus_per_node, resources=resources, log=str(log))
        self.nodes.append(node)
        self._save()
        try:
            rc = proc.wait(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`ray start` of the {role} node did not finish within {self.start_timeout_s:.0f} s; "
                               f"log: {log}") from None
        node.started_s = round(time.monotonic() - t0, 1)
        text = Path(log).read_text(errors="replace")
        if rc != 0:
            raise RuntimeError(f"`ray start` of the {role} node failed (exit {rc}); last lines of {log}:\n"
                               + "\n".join(text.splitlines()[-15:]))
        if head:
            m = re.search(r"Local node IP: ([0-9.]+)", text)
            self.address = f"{m.group(1)}:{ports['port']}" if m else expected
            self.dashboard_url = f"http://127.0.0.1:{ports['dashboard-port']}"
            if self.address != expected:
                raise RuntimeError(f"the head listens on {self.address}, not {expected} as its processes were told "
                                   "(RAY_ADDRESS); set --node-ip-address to the host's address")
        self._save()
        return node

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Block until ``n`` nodes are alive (``ray list nodes``); returns them."""
        deadline = time.monotonic() + timeout_s
        alive: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError, ValueError, OSError):
                alive = [x for x in self.list_nodes() if x.get("state") == "ALIVE"]
                if len(alive) >= n:
                    return alive
            time.sleep(1.0)
        raise RuntimeError(f"only {len(alive)} of {n} nodes alive after {timeout_s:.0f} s")

    def list_nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes as Ray's state API lists them (node_id, state, resources_total, ...)."""
        out = subprocess.run(
            [ray_executable(), "list", "nodes", "--format=json", "--detail", f"--address={self.dashboard_url}"],
            capture_output=True, text=True, timeout=60, env=self.env(),
        )
        if out.returncode != 0:
            raise subprocess.SubprocessError(out.stderr[-500:])
        return json.loads(out.stdout[out.stdout.index("["):])

    # ------------------------------------------------------------------------------ stop
    def kill_node(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Kill one node at once (every process of its session), as a machine failure would."""
        _signal_session(node.pid, sig)
        node.stopped = True
        self._save()

    def stop(self) -> None:
        """Worker nodes first, then the head: SIGTERM, then SIGKILL after ``stop_grace_s``."""
        for node in sorted(self.nodes, key=lambda n: n.index == 0):
            stop_session(node.pid, self.stop_grace_s)
            node.stopped = True
        self._save()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ state
    def _save(self) -> None:
        state = {"address": self.address, "dashboard_url": self.dashboard_url, "auth": self.auth,
                 "root": str(self.root), "env": self._auth_env(), "nodes": [asdict(n) for n in self.nodes]}
        tmp = self.state_path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path / STATE_FILE)


def session_members(sid: int) -> list[int]:
    """Live PIDs whose session id is ``sid`` (the node's ``ray start`` pid): the node's own processes only.
    Zombies (dead, waiting for their parent to reap them) are not counted."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        with contextlib.suppress(OSError):
            if os.getsid(pid) != sid:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] != "Z":
                pids.append(pid)
    return pids


def _signal_session(sid: int, sig: int) -> list[int]:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, sig)
    members = session_members(sid)
    for pid in members:  # members that moved to their own process group stay in the session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return members


def stop_session(sid: int, grace_s: float) -> None:
    """SIGTERM every process of session ``sid``, SIGKILL what is left after ``grace_s``."""
    if not _signal_session(sid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_members(sid):
        time.sleep(0.25)
    if session_members(sid):
        _signal_session(sid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and session_members(sid):
            time.sleep(0.2)


def stop_from_state(state_dir: str | os.PathLike[str], grace_s: float = 8.0) -> int:
    """Stop the cluster recorded in ``<state_dir>/cluster.json`` (from another process); returns nodes stopped."""
    path = Path(state_dir) / STATE_FILE
    state = json.loads(path.read_text())
    nodes = sorted(state["nodes"], key=lambda n: n["index"] == 0)
    for n in nodes:
        stop_session(n["pid"], grace_s)
        n["stopped"] = True
    path.write_text(json.dumps(state, indent=2))
    root = state.get("root") or ""
    if root.startswith("/tmp/armada-rc-"):  # the node temp dirs this module created, nothing else
        shutil.rmtree(root, ignore_errors=True)
    return len(nodes)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A head + N worker-node Ray cluster on this machine (loopback).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start the cluster and record it in <state-dir>/cluster.json")
    s.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    s.add_argument("--cpus", type=float, default=1, help="CPUs each node advertises (default 1)")
    s.add_argument("--head-cpus", type=float, default=None, help="CPUs of the head (default: --cpus)")
    s.add_argument("--gpus", type=int, default=0, help="GPUs each node advertises (default 0)")
    s.add_argument("--auth", choices=("token", "disabled"), default="token")
    s.add_argument("--state-dir", required=True)
    for name in ("status", "stop"):
        q = sub.add_parser(name, help=f"{name} the cluster recorded in <state-dir>")
        q.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    if args.cmd == "start":
        c = LocalCluster(num_workers=args.workers, cpus_per_node=args.cpus, head_cpus=args.head_cpus,
                         gpus_per_node=args.gpus, auth=args.auth, state_dir=args.state_dir).start()
        print(f"cluster up: {len(c.nodes)} node(s); GCS {c.address}; dashboard {c.dashboard_url}")
        print("client environment (for `ray job submit --address " + str(c.dashboard_url) + " ...`):")
        for k, v in c._auth_env().items():
            print(f"  export {k}={v}")
        print(f"stop it with: python {Path(__file__).resolve()} stop --state-dir {c.state_path}")
        return 0
    if args.cmd == "status":
        state = json.loads((Path(args.state_dir) / STATE_FILE).read_text())
        for n in state["nodes"]:
            alive = len(session_members(n["pid"]))
            print(f"{n['role']:<10} pid/pgid {n['pid']:<8} {alive:>3} processes  cpus {n['num_cpus']}  "
                  f"temp {n['temp_dir']}")
        print(f"GCS {state['address']}  dashboard {state['dashboard_url']}")
        return 0
    print(f"stopped {stop_from_state(args.state_dir)} node(s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
