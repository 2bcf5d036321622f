"""DeepSpeed's JIT-compiled ops: built once ahead of time, and loaded so that a killed build never blocks.

DeepSpeed compiles some ops on first use (on CPU: ``deepspeed_shm_comm`` at every ``init_distributed``,
≈ 45 s on 2 cores; ``cpu_adam`` for optimizer offload, ≈ 60 s) through ``torch.utils.cpp_extension.load``.
Torch serialises concurrent builds with a ``lock`` file it creates with ``O_EXCL`` and deletes when done; a
builder killed mid-build (Ctrl-C on what looks like a stuck start, a CI timeout) leaves that file behind,
and every later process waits on it forever, silently (issue 17).

What this module does instead, and why by hand: torch's baton records no owner, so a stale one cannot be told
from a live one. We put an OS lock (``fcntl.flock``, which the kernel releases when its holder dies) around
every load of an op we use. Whoever holds our lock knows no other armada process is building that op, so a
torch ``lock`` file still present is a dead builder's: it is removed with a one-line warning and the build
resumes (ninja keeps the object files it already had). The load is done here, before DeepSpeed asks for the
op: DeepSpeed caches loaded ops per process (``OpBuilder._loaded_ops``), so its own later ``load()`` returns
the module without touching the baton. No collective runs while the lock is held, so ranks cannot deadlock.

``python -m armada_ray.train.ops`` (run by ``make install``) builds the op every CPU run uses (the collectives)
into the project's extensions folder; ``--offload`` (run by ``make test``) also builds CPU Adam, which only
``train.offload=true`` needs: a first offload run elsewhere builds it then, saying so (≈ 60 s once), and
``make demo`` on a fresh clone does not pay for an op it never loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

def _default_extensions_dir() -> Path:
    """One folder per Python environment: torch rebuilds an op whose sources or flags changed, and every
    virtualenv has its own DeepSpeed source path, so two checkouts sharing a folder would rebuild each other's
    ops at run time (seen: a second clone's tests recompiling deepspeed_shm_comm)."""
    tag = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    return Path(os.environ.get("ARMADA_CACHE_DIR") or Path.home() / ".cache" / "armada-ray") / "torch_extensions" / (
        f"py{sys.version_info.major}{sys.version_info.minor}-{tag}")


DEFAULT_EXTENSIONS_DIR = _default_extensions_dir()
# builder class -> (op name = build folder, what it is for, how long a build usually takes on 2 cores)
CPU_OPS = {
    "ShareMemCommBuilder": ("deepspeed_shm_comm", "CPU collectives", 45),
    "CPUAdamBuilder": ("cpu_adam", "optimizer offload", 60),
}
LOCK_NAME = ".armada-build.flock"


def _say(message: str) -> None:
    print(message, flush=True)


def extensions_dir() -> Path:
    """Where torch builds extensions for us: ``$TORCH_EXTENSIONS_DIR``, else the project's cache folder."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or DEFAULT_EXTENSIONS_DIR)


def use_extensions_dir() -> Path:
    """Point torch at :func:`extensions_dir` in this process (torch reads the variable at every load)."""
    path = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    return path


def is_built(name: str, root: Path | None = None) -> bool:
    """True when op ``name`` has a finished build (its shared object) and no build lock in ``root``."""
    folder = (root or extensions_dir()) / name
    return (folder / f"{name}.so").exists() and not (folder / "lock").exists()


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Exclusive OS lock on ``folder`` (blocking); the kernel releases it when the holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def clear_stale_baton(folder: Path) -> bool:
    """Remove torch's build ``lock`` in ``folder``; call only while holding :func:`build_lock`."""
    baton = folder / "lock"
    if not baton.exists():
        return False
    baton.unlink(missing_ok=True)
    return True


def guarded_load(name: str, load: Callable[[], Any], log: Callable[[str], None] = _say,
                 minutes_hint: float | None = None) -> Any:
    """Run ``load`` (which may JIT-build op ``name``) under :func:`build_lock`, clearing a dead build's lock
    and saying what it builds and how long that takes."""
    root = use_extensions_dir()
    folder = root / name
    with build_lock(folder):
        if clear_stale_baton(folder):
            log(f"warning: {folder / 'lock'} was left by a build that was killed; removed it and rebuilding {name}")
        building = not (folder / f"{name}.so").exists()
        if building:
            hint = f", usually about {minutes_hint:.0f} s on 2 cores" if minutes_hint else ""
            log(f"building DeepSpeed op {name} into {folder} (once per Python environment{hint})")
        t0 = time.perf_counter()
        module = load()
        if building:
            log(f"built {name} in {time.perf_counter() - t0:.0f} s")
    return module


def load_op(builder_name: str, log: Callable[[str], None] = _say) -> Any | None:
    """Load DeepSpeed op ``builder_name`` for the current accelerator through :func:`guarded_load`.

    None where the accelerator has no such op or it cannot build here (DeepSpeed then does without it).
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(builder_name)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    hint = CPU_OPS.get(builder_name, (None, None, None))[2]
    return guarded_load(builder.name, lambda: builder.load(verbose=False), log, hint)


def prepare_ops(on_gpu: bool, offload: bool, log: Callable[[str], None] = _say) -> list[str]:
    """Load, before ``deepspeed.initialize``, every JIT op this run will ask for; returns their builder names.

    CPU runs need the shared-memory collectives; offload needs CPU Adam (on either device).
    """
    wanted = ([] if on_gpu else ["ShareMemCommBuilder"]) + (["CPUAdamBuilder"] if offload else [])
    return [b for b in wanted if load_op(b, log) is not None]


def main(argv: list[str] | None = None) -> int:
    """Build the CPU path's ops (``make install``; ``--offload`` adds CPU Adam); one line once built."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m armada_ray.train.ops", description=main.__doc__)
    ap.add_argument("--offload", action="store_true", help="also build cpu_adam (train.offload=true)")
    args = ap.parse_args(argv)
    root = extensions_dir()
    wanted = {b: v for b, v in CPU_OPS.items() if args.offload or b != "CPUAdamBuilder"}
    names = [name for name, _, _ in wanted.values()]
    if all(is_built(n, root) for n in names):
        print(f"DeepSpeed ops already built in {root}: {', '.join(names)}")
        return 0
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for builder_name, (name, purpose, _) in wanted.items():
        if not is_built(name, root):
            _say(f"DeepSpeed op {name} ({purpose}) is built ahead of time so no run compiles it")
        if load_op(builder_name) is None:
            print(f"warning: DeepSpeed op {name} cannot be built on this machine; runs go without it")
    print(f"DeepSpeed ops ready in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
