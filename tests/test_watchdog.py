"""The suite's time bounds fire on a test that hangs, name it, and leave no process behind (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent

HUNG = textwrap.dedent('''
    import subprocess, threading

    def test_hangs_forever(tmp_path_factory):
        child = subprocess.Popen(["sleep", "300"])
        open({pidfile!r}, "w").write(str(child.pid))
        threading.Event().wait()   # never set: what a wait on a dead build's lock looks like
''')


def _run_hung(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    pidfile = tmp_path / "child.pid"
    (tmp_path / "test_hung.py").write_text(HUNG.format(pidfile=str(pidfile)))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "_watchdog", "-v", "-p", "no:cacheprovider", *args,
         str(tmp_path / "test_hung.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(HERE), **(env or {})},
    )
    return proc, int(pidfile.read_text()), time.monotonic() - t0


def test_a_hung_test_stops_the_suite_with_its_name_within_its_bound(tmp_path):
    proc, child, took = _run_hung(tmp_path, "--timeout=4", env={"ARMADA_SUITE_TIMEOUT_S": "0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "test_hung.py::test_hangs_forever hung: still running after its 4 s bound" in out
    assert "threading.py" in out and "test_hangs_forever" in out  # the stacks
    assert took < 60
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_the_suite_bound_names_the_running_test(tmp_path):
    proc, child, took = _run_hung(tmp_path, "--timeout=600", env={"ARMADA_SUITE_TIMEOUT_S": "5"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3
    assert "passed its 5 s bound (ARMADA_SUITE_TIMEOUT_S) while running" in out
    assert "test_hung.py::test_hangs_forever" in out
    assert took < 60
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
