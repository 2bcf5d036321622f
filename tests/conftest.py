"""Shared test infrastructure.

- One private local Ray instance per test session (``ray_local``): ``address="local"`` so a stale
  ``/tmp/ray/ray_current_cluster`` from a killed cluster cannot make ``ray.init`` hang (NOTES.md),
  usage stats and dashboard off.
- The DeepSpeed CPU communication extension is compiled once into a cached folder
  (``TORCH_EXTENSIONS_DIR`` under ``~/.cache/armada-ray``), not in every test.
- Models are resolved through ``armada_ray.model.hub`` whose SmolLM2 conversion is cached on disk.
- Every test has a timeout (pyproject) and the suite has one (``ARMADA_SUITE_TIMEOUT_S``), both on timer
  threads that fire even in native waits (``_watchdog.py``); end-to-end tests carry ``@pytest.mark.slow``
  and still run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _watchdog import pytest_runtest_logstart, pytest_sessionstart, pytest_timeout_set_timer  # noqa: F401

CACHE = Path(os.environ.get("ARMADA_CACHE_DIR", Path.home() / ".cache" / "armada-ray"))
os.environ.setdefault("ARMADA_CACHE_DIR", str(CACHE))
from armada_ray.train.ops import DEFAULT_EXTENSIONS_DIR  # noqa: E402 - after ARMADA_CACHE_DIR is set

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

OUTPUT = Path(__file__).parent / "_output"


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance for the whole session."""
    from armada_ray.ray_utils import ensure_ray

    import ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def output_dir(request) -> Path:
    """A kept folder per test under tests/_output (screenshots, logs), gitignored."""
    d = OUTPUT / request.node.name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def forbid_fingerprinting(monkeypatch):
    """Every way of fingerprinting a teacher from its config raises: what a worker, given the driver's teacher
    identity, must never do (an hf fingerprint hashes a node-local model folder)."""
    from armada_ray.cache import identity
    from armada_ray.teachers import factory
    from armada_ray.teachers.diffusion import DiffusionTeacher
    from armada_ray.teachers.hf import HFTeacher
    from armada_ray.teachers.http import HttpTeacher

    def boom(*args, **kwargs):
        raise AssertionError("a worker fingerprinted the teacher")

    for owner, name in ((identity, "teacher_fingerprint"), (factory, "teacher_fingerprint"), (factory, "build_teacher"),
                        (HFTeacher, "fingerprint"), (DiffusionTeacher, "fingerprint"), (HttpTeacher, "fingerprint")):
        monkeypatch.setattr(owner, name, boom)
