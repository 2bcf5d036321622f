"""Time bounds that fire even when a test hangs where no signal reaches Python (issue 17).

pytest-timeout's default ``signal`` method raises inside the main thread, which never happens while that
thread waits in native code (a Ray Train driver waiting on workers that wait on a dead build's lock: a CI
run sat there for over 16 minutes past the 600 s bound). Here both bounds run on timer threads:

- per test (pytest-timeout's ``timeout``): name the test, kill every process the session started, then
  hand over to pytest-timeout's thread method (captured output, every thread's stack, ``os._exit``);
- the suite (``ARMADA_SUITE_TIMEOUT_S``, default 80 min, inside CI's 90): the same, naming the test that
  was running when the bound passed.

Loaded by ``tests/conftest.py``; ``tests/test_watchdog.py`` runs a deliberately hung test through it.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

import psutil
import pytest

SUITE_BOUND_S = float(os.environ.get("ARMADA_SUITE_TIMEOUT_S", 80 * 60))
_current: dict = {"nodeid": "<between tests>", "since": time.monotonic(), "config": None}


def _say(message: str) -> None:
    sys.__stderr__.write(f"\n[armada watchdog] {message}\n")
    sys.__stderr__.flush()


def kill_descendants() -> list[int]:
    """SIGKILL every process this one started (Ray, servers, trainers), children first; their PIDs."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in reversed(children):
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)
    return [c.pid for c in children]


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    _current.update(nodeid=nodeid, since=time.monotonic())


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """Per-test bound on a timer thread; returns None (pytest-timeout's own timer) when no bound is set."""
    if not settings.timeout or settings.timeout <= 0:
        return None
    import pytest_timeout

    def fire() -> None:
        _say(f"{item.nodeid} hung: still running after its {settings.timeout:.0f} s bound; "
             "killing the processes it started, then every thread's stack and the suite stops")
        killed = kill_descendants()
        _say(f"killed {len(killed)} child process(es): {killed[:20]}")
        pytest_timeout.timeout_timer(item, settings)  # dumps output and stacks, then os._exit(1)

    timer = threading.Timer(settings.timeout, fire)
    timer.name, timer.daemon = f"armada-timeout {item.nodeid}", True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel
    timer.start()
    return True


def _release_capture() -> None:
    """Stop pytest's fd capture so what follows reaches the real stderr; replay what was captured."""
    capman = _current["config"].pluginmanager.getplugin("capturemanager") if _current["config"] else None
    if capman is None:
        return
    try:
        capman.suspend_global_capture(in_=True)
        out, err = capman.read_global_capture()
        sys.__stderr__.write(out + err)
    except Exception:  # noqa: BLE001 - best effort: the stop below must happen regardless
        pass


def _suite_watchdog(bound: float) -> None:
    time.sleep(bound)
    _release_capture()
    running = time.monotonic() - _current["since"]
    _say(f"the test suite passed its {bound:.0f} s bound (ARMADA_SUITE_TIMEOUT_S) while running "
         f"{_current['nodeid']} (for {running:.0f} s); stacks of every thread follow, then the suite stops")
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    killed = kill_descendants()
    _say(f"killed {len(killed)} child process(es); exiting")
    os._exit(3)


def pytest_sessionstart(session: pytest.Session) -> None:
    _current["config"] = session.config
    if SUITE_BOUND_S > 0:
        threading.Thread(target=_suite_watchdog, args=(SUITE_BOUND_S,), name="armada-suite-watchdog",
                         daemon=True).start()
