"""DeepSpeed's JIT ops: a build killed mid-way never blocks a later run (issue 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from _paths import ROOT

from armada_ray.train import ops


def _kill_orphan_compilers(ext: Path) -> None:
    """The Ray worker building the op, and its g++/ninja children, are not in the killed run's process group and
    outlive it: a worker left alive finishes or aborts the build and removes torch's lock itself, which is not
    the dead builder under test. Killed by PID: processes working in ``ext`` or holding a file open there."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.cwd().startswith(str(ext)) or any(f.path.startswith(str(ext)) for f in proc.open_files()):
                proc.kill()
        except psutil.Error:
            continue


def _fake_build(folder: Path, name: str):
    """Stands in for torch's JIT build (what matters here is the lock dance, not g++): writes the .so."""
    def load():
        (folder / f"{name}.so").write_text("built")
        return name
    return load


def test_a_dead_builders_lock_file_is_removed_with_a_warning_and_the_build_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = tmp_path / "some_op"
    folder.mkdir()
    (folder / "lock").touch()  # what a builder killed mid-build leaves behind
    (folder / "main.o").touch()
    said: list[str] = []
    assert ops.guarded_load("some_op", _fake_build(folder, "some_op"), said.append, 45) == "some_op"
    assert not (folder / "lock").exists() and ops.is_built("some_op", tmp_path)
    assert any("left by a build that was killed" in s for s in said)
    assert any("building DeepSpeed op some_op" in s and "about 45 s" in s for s in said)
    # built: a second load says nothing
    said.clear()
    ops.guarded_load("some_op", _fake_build(folder, "some_op"), said.append)
    assert said == []


def test_the_os_lock_waits_for_a_live_builder_and_is_released_when_it_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = tmp_path / "some_op"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from armada_ray.train import ops\n"
         f"with ops.build_lock(Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = threading.Event()
        threading.Thread(target=lambda: (ops.guarded_load("some_op", _fake_build(folder, "some_op"),
                                                          lambda s: None), done.set()), daemon=True).start()
        assert not done.wait(1.5), "the lock of a live builder must be waited for"
        holder.send_signal(signal.SIGKILL)  # a dead holder: the kernel drops its flock
        assert done.wait(10), "a dead builder's lock must not block"
    finally:
        holder.kill()
        holder.wait()


def test_make_install_leaves_no_cpu_op_to_compile():
    """`make test` ran `python -m armada_ray.train.ops --offload` into the default folder the tests and runs use."""
    for name, _, _ in ops.CPU_OPS.values():
        assert ops.is_built(name), f"{name} is not built in {ops.extensions_dir()}: run `make install`"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two start-ups and a full op build: 228 s on a quiet 2-core machine, far more under load
def test_train_killed_while_the_op_builds_then_rerun_finishes_and_says_what_happened(tmp_path):
    ext = tmp_path / "torch_extensions"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "armada_ray.cli", "train", "--config", "jobs/demo.yaml",
           f"paths.work_dir={tmp_path / 'work'}", "loss.mode=baseline", "student.model=tiny-llama",
           "student.lora.layers_to_transform=null", "task.name=pang_lee_polarity", "task.max_train=16",
           "task.max_dev=8", "task.max_test=8", "tracking.enabled=false", "student.max_length=32",
           "train.epochs=1", "scaling.max_failures=0"]
    baton = ext / "deepspeed_shm_comm" / "lock"
    log1 = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not baton.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert baton.exists(), f"the op build never started: {(tmp_path / 'first.log').read_text()[-2000:]}"
        time.sleep(3)  # let g++ get going
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # Ctrl-C on what looks like a stuck start, or a CI timeout
        first.wait()
        _kill_orphan_compilers(ext)
    assert baton.exists() and not (ext / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").exists()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    out = second.stdout + second.stderr
    (tmp_path / "second.log").write_text(out)
    assert second.returncode == 0, out[-3000:]
    assert "was left by a build that was killed; removed it and rebuilding deepspeed_shm_comm" in out
    assert "built deepspeed_shm_comm in" in out
    assert ops.is_built("deepspeed_shm_comm", ext)
