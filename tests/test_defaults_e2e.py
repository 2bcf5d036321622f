"""The README's commands on the default relative ``paths.work_dir`` (``./armada_runs``), run as a user would
(issue 13: Ray workers resolved it against their own working directory and missed the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _paths import ROOT

# the demo config with a local teacher (no server) and tiny shapes; paths.work_dir stays the default
SMALL = ["task.name=pang_lee_polarity", "task.max_train=32", "task.max_dev=16", "task.max_test=16",
         "student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
         "teacher={kind: hf, model: minilm, stand_in: true}", "aligner.hidden=32", "aligner.proj_dim=16",
         "train.epochs=1", "train.report_every=2"]


def armada(cwd: Path, *args: str, timeout: int = 420) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "armada_ray.cli", *args, "--config", "jobs/demo.yaml", *SMALL,
                          "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"armada {args}: {out.stdout[-2500:]}\n{out.stderr[-2500:]}"
    return {"json": json.loads(out.stdout.strip().splitlines()[-1]), "out": out.stdout + out.stderr}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_embed_probe_train_eval_export_tune_on_the_default_relative_work_dir(tmp_path):
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")  # `--config jobs/demo.yaml` from a checkout's root
    work = tmp_path / "armada_runs"
    embed = armada(tmp_path, "embed")["json"]
    assert Path(embed["cache_path"]).is_relative_to(work)

    probe = armada(tmp_path, "probe")
    assert 0.0 <= probe["json"]["floor_dev_metric"] <= probe["json"]["probe_dev_metric"] <= 1.0
    assert "linear probe on the teacher vectors" in probe["out"]

    train = armada(tmp_path, "train")
    summary = train["json"]
    assert Path(summary["run_dir"]).is_relative_to(work) and Path(summary["best_checkpoint"]).is_relative_to(work)
    assert "aligner fitted: best dev metric" in train["out"] and "linear probe on the teacher vectors" in train["out"]
    # each worker line reaches the console once (issue 16: Ray Train's print patch doubled them)
    placement = [line for line in train["out"].splitlines() if " rank 0] placement:" in line]
    assert len(placement) == 1, placement

    ev = armada(tmp_path, "eval", f"eval.checkpoint={summary['best_checkpoint']}")["json"]
    assert 0.0 <= ev["metric_value"] <= 1.0
    # no cluster: eval and export run on this machine, in the driver (on a cluster, as Ray tasks: test_cluster.py)
    assert ev["ran_in"]["ray_task"] is False and Path(ev["predictions"]).is_relative_to(work)
    exported = armada(tmp_path, "export")["json"]
    assert exported["ran_in"]["ray_task"] is False and Path(exported["export_dir"]).is_relative_to(work / "exports")
    assert (Path(exported["export_dir"]) / "armada_student.json").is_file()

    # the sweep: one trial and the undistilled baseline (the demo's search space shares nothing with it, so it is
    # one run; the seeded comparison is tested in test_tune.py)
    sweep = armada(tmp_path, "tune", "tune.num_samples=1", "tune.seeds=[]", "tune.include_baseline=true")["json"]
    assert Path(sweep["sweep_dir"]).is_relative_to(work / "runs" / "demo") and sweep["trials"] == 1
    assert sweep["baseline_dev_metric"] is not None and Path(sweep["export_dir"]).is_relative_to(work / "exports")

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags.get("armada.kind") for r in runs)
    assert {"train", "probe", "sweep", "trial"} <= set(kinds), kinds
    # issue 13: every trial and the baseline under the one sweep parent the user browses
    parent = next(r for r in runs if r.info.run_id == sweep["mlflow_parent_run_id"])
    assert parent.data.tags["armada.kind"] == "sweep" and parent.info.status == "FINISHED"
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert len(children) == 2 and sum(c.endswith("/baseline") for c in children) == 1, children
    assert not list(tmp_path.glob("**/session_*/artifacts/**/armada_runs"))
