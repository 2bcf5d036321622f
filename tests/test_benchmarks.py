"""The GPU benchmarks run unchanged on CPU with tiny shapes (`--quick`): same code path, JSON line last."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from _paths import ROOT


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
def test_gpu_smoke_benchmark_runs_on_cpu_with_tiny_shapes():
    """The one-GPU smoke run's three legs on the CPU, through the per-worker loop without Ray or MLflow: a LoRA
    checkpoint without the frozen weights resumes to the same next-step loss and generates 8 tokens."""
    r = _run("gpu_smoke.py")
    assert r["name"] == "gpu_smoke" and r["student_shape"] == "tiny-llama" and r["value"] is None  # no MFU on CPU
    for leg in ("lora", "teacher", "offload"):
        assert "error" not in r["legs"][leg], (leg, r["legs"][leg])
    finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x) and x > 0  # noqa: E731
    assert finite(r["tokens_per_s"]) and finite(r["achieved_tflops"]) and finite(r["offload_step_s"])
    assert finite(r["checkpoint_bytes"]) and finite(r["checkpoint_save_s"])
    assert all(finite(r["teacher_rows_per_s"][b]) for b in ("8", "32"))
    assert r["checkpoint_deepspeed_bytes"] < r["frozen_param_bytes"] / 4  # adapters + heads + optimizer, no base
    assert r["resume_loss_rel_diff"] < 1e-4 and r["legs"]["lora"]["resumed_after_epoch"] == 1
    assert r["generated_tokens"] == 8
    assert r["legs"]["offload"]["optimizer"] == "DeepSpeedCPUAdam"
    assert not r["imported"]["ray"] and not r["imported"]["mlflow"]


@pytest.mark.slow
def test_gpu_llama8b_benchmark_runs_on_cpu_with_tiny_shapes():
    r = _run("gpu_llama8b.py")
    assert r["name"] == "gpu_llama8b" and r["student_shape"] == "tiny-llama"
    for mode in ("lora", "full"):
        assert r[mode]["tokens_per_s"] > 0 and r[mode]["armada_vs_undistilled"] > 0
