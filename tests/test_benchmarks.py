"""The GPU benchmarks run unchanged on CPU with tiny shapes (`--quick`): same code path, JSON line last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str) -> dict:
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"name", "value", "unit"} <= set(result) and result["quick"] is True
    return result


@pytest.mark.slow
def test_gpu_teacher_benchmark_runs_on_cpu_with_tiny_shapes():
    r = _run("gpu_teacher.py")
    assert r["name"] == "gpu_teacher" and r["value"] > 0


@pytest.mark.slow
def test_gpu_llama8b_benchmark_runs_on_cpu_with_tiny_shapes():
    r = _run("gpu_llama8b.py")
    assert r["name"] == "gpu_llama8b" and r["student_shape"] == "tiny-llama"
    for mode in ("lora", "full"):
        assert r[mode]["tokens_per_s"] > 0 and r[mode]["armada_vs_undistilled"] > 0
