"""Reading the environment while library threads change it (issue 18): no walk of os.environ may raise."""

from __future__ import annotations

import os
import threading

from armada_ray import environ
from armada_ray.tracking.scrub import scrub_params


def _churn(stop: threading.Event, prefix: str) -> None:
    """What MLflow's telemetry thread does: set and unset variables in a tight loop."""
    i = 0
    while not stop.is_set():
        name = f"{prefix}{i % 64}"
        os.environ[name] = "s3cr3t-value-" + str(i)
        os.environ.pop(name, None)
        i += 1


def test_scrubber_never_raises_while_another_thread_changes_the_environment():
    os.environ["ARMADA_TEST_API_KEY"] = "sk-test-1234567890"
    stop = threading.Event()
    threads = [threading.Thread(target=_churn, args=(stop, f"_ARMADA_CHURN_{t}_"), daemon=True) for t in range(2)]
    for t in threads:
        t.start()
    errors: list[BaseException] = []
    try:
        for _ in range(3000):
            try:
                kept, dropped = scrub_params({"teacher.endpoint": "http://h/v1?k=sk-test-1234567890", "lr": 1e-3})
                assert dropped == ["teacher.endpoint"] and kept == {"lr": 1e-3}
                environ.snapshot()
            except Exception as exc:  # noqa: BLE001 - any exception is the failure under test
                errors.append(exc)
    finally:
        stop.set()
        for t in threads:
            t.join()
        os.environ.pop("ARMADA_TEST_API_KEY", None)
    assert not errors, f"{len(errors)} of 3000 reads raised, first: {errors[0]!r}"


def test_the_unsafe_walk_does_race_so_the_test_above_can_fail():
    """Guards the test: iterating os.environ.items() under the same churn raises within a few thousand walks."""
    stop = threading.Event()
    thread = threading.Thread(target=_churn, args=(stop, "_ARMADA_RACE_"), daemon=True)
    thread.start()
    raised = False
    try:
        for _ in range(20000):
            try:
                for _name, _value in os.environ.items():
                    pass
            except (KeyError, RuntimeError):
                raised = True
                break
    finally:
        stop.set()
        thread.join()
    assert raised


def test_snapshot_is_a_plain_copy():
    os.environ["ARMADA_SNAP_X"] = "1"
    try:
        snap = environ.snapshot()
        assert snap["ARMADA_SNAP_X"] == "1" and isinstance(snap, dict)
        snap["ARMADA_SNAP_X"] = "2"
        assert os.environ["ARMADA_SNAP_X"] == "1"
    finally:
        del os.environ["ARMADA_SNAP_X"]
