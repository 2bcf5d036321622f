"""`armada report` at CI size: every cell of the study is produced and finite (issue 12).

The scientific outcome is reported by the full study (benchmarks/ablation.py), never asserted here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import ROOT

from armada_ray.config import ConfigError, load_config
from armada_ray.report import mean_ci95, paired

TINY = ["task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=12", "task.max_test=12",
        "student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
        "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=1", "report.seeds=[1, 2]",
        "report.transfer_rows=8", "task.transfer_rows=8", "report.setups=[]",
        "report.variants=[baseline, armada-cosine, armada-euclid, armada-pointwise, shuffle-pairs, shuffle-targets, "
        "random-aligner, alpha0, beta0, transfer]"]


def test_intervals_and_paired_differences():
    mean, half = mean_ci95([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and half == pytest.approx(0.2484, abs=1e-3)  # t(0.975, 2) = 4.303
    d = paired([0.9, 0.8, 0.85], [0.8, 0.8, 0.8])
    assert d["gain_points"] == pytest.approx(5.0) and d["pairs"] == 3 and 0 < d["p_value"] < 1
    assert d["gain_ci95_low"] < 5.0 < d["gain_ci95_high"]
    assert math.isnan(mean_ci95([0.7])[1])
    same = paired([0.75, 0.75], [0.74, 0.74])  # every seed the same difference: no t-test (was reported as p = 0)
    assert same["gain_points"] == pytest.approx(1.0) and math.isnan(same["p_value"])
    # the demo's case: one more test row right on both seeds (89/120 vs 88/120, 90/120 vs 89/120), equal up to
    # float noise: still no t-test (the demo printed p = 0.000)
    noisy = paired([89 / 120, 90 / 120], [88 / 120, 89 / 120])
    assert noisy["gain_points"] == pytest.approx(100 / 120) and math.isnan(noisy["p_value"])


def test_an_unknown_variant_is_refused_naming_it():
    with pytest.raises(ConfigError, match="unknown variant 'cosine'; allowed: baseline"):
        load_config(ROOT / "jobs" / "ablation.yaml", ["report.variants=[cosine]"])


def _armada(tmp_path: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "armada_ray.cli", *args, "--config", "jobs/ablation.yaml",
                           f"paths.work_dir={tmp_path}", *TINY, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 20 cells (10 variants x 2 seeds) after an embed: about 3 min on a quiet 2-core machine
def test_ci_sized_study_produces_every_cell_finite(tmp_path):
    refused = _armada(tmp_path, "report", timeout=300)  # nothing embedded yet: refused before any training
    assert refused.returncode == 2 and "run `armada embed`" in refused.stderr, refused.stderr[-1500:]

    embed = _armada(tmp_path, "embed")
    assert embed.returncode == 0, embed.stderr[-2000:]
    out = _armada(tmp_path, "report")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["name"] == "ablation" and result["unit"] == "points" and result["seeds"] == [1, 2]
    variants = [c["variant"] for c in result["cells"]]
    assert len(variants) == 10 and len(set(variants)) == 10
    for cell in result["cells"]:
        assert not cell["errors"], cell
        assert len(cell["seed_scores"]) == 2 and all(0.0 <= s <= 1.0 for s in cell["seed_scores"]), cell
        assert math.isfinite(cell["mean"])
    assert 0.0 <= result["probe"] <= 1.0 and math.isfinite(result["value"])
    assert result["per_run_overhead_s"] is not None
    report = Path(result["report_dir"])
    assert (report / "report.md").read_text().count("| ") > 10 and (report / "report.json").exists()


_BEST_EPOCH_SCRIPT = """
import json, os, warnings
warnings.filterwarnings("ignore")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from armada_ray.config import load_config
from armada_ray.train import ops
from armada_ray.train.loop import ArmadaWorker
from armada_ray.train.session import LocalSession
ops.use_extensions_dir()
common = ["task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=16", "task.max_test=16",
          "student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
          "tracking.enabled=false", "loss.mode=baseline", "train.epochs=3", "train.lr=0.003", "run_name=t"]
session = LocalSession.create("cpu", quiet=True)
out = {}
for zero in (2, 3):
    w = ArmadaWorker(load_config("jobs/demo.yaml", common + [f"train.zero_stage={zero}"]), session,
                     parent_run_id=None, eval_test=True)
    w.run()
    out[zero] = {k: w.state.get(k) for k in ("best_epoch", "best_dev_metric", "test_at_best_dev")}
    out[zero]["dev"] = [h["dev_metric"] for h in w.state["history"]]
print(json.dumps(out))
"""


def test_test_at_best_dev_is_the_best_epochs_weights_scored_once():
    """ZeRO-2 keeps the best epoch's trained weights and scores test once at the end (swapping them in when a later
    epoch was worse); ZeRO-3 scores test at each new best epoch. Same data, seed and steps: the same figure.
    (Seed 42, lr 0.003, 3 epochs of the tiny student: its best dev epoch is epoch 2, so the swap is exercised.)"""
    got = subprocess.run([sys.executable, "-c", _BEST_EPOCH_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert got.returncode == 0, got.stderr[-3000:]
    res = json.loads(got.stdout.strip().splitlines()[-1])
    z2, z3 = res["2"], res["3"]
    assert z2 == z3, res
    assert z2["best_epoch"] < 3 and max(z2["dev"]) == z2["best_dev_metric"] and z2["test_at_best_dev"] is not None
