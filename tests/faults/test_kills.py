"""A Ray Train worker SIGKILLed mid-training (issue 13): Ray Train restarts the worker group from the last registered
checkpoint (``scaling.max_failures``), the run ends with every epoch, the epoch after the kill starts from the same
loss as an uninterrupted run, and the trial is still exactly one MLflow run (the checkpoint carries its run id).
Real local Ray, real DeepSpeed, a real MLflow store; the kill is a real SIGKILL of the worker's process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from armada_ray.config import load_config

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SMALL = ["task.name=pang_lee_polarity", "task.max_train=32", "task.max_dev=16", "task.max_test=16",
         "student.max_length=64", "train.batch_size=8", "train.report_every=2",
         "student.model=minilm", "student.lora.enabled=false", "teacher={kind: hf, model: minilm, stand_in: true}",
         "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=3", "train.lr=0.001", "scaling.max_failures=1",
         "scaling.cpus_per_worker=1"]


def _registered_epochs(run_dir: Path) -> list[int]:
    """Epochs whose checkpoint Ray Train's controller has registered (a reported checkpoint not yet taken by the
    controller's poll dies with the worker)."""
    snap = run_dir / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snap.read_text()).get("checkpoint_results") or []
    except (OSError, ValueError):
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in results if "epoch" in (r.get("metrics") or {}))


def _kill_the_worker_after_epoch_one(run_dir: Path, killed: dict, deadline: float) -> None:
    from ray.util.state import list_actors

    while time.monotonic() < deadline:
        if 1 in _registered_epochs(run_dir):
            for actor in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]):
                if actor.pid:
                    os.kill(actor.pid, signal.SIGKILL)
                    killed["pid"], killed["after_epochs"] = actor.pid, _registered_epochs(run_dir)
            return
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_train_worker_resumes_to_the_same_next_step_loss_in_one_mlflow_run(tmp_path, ray_local):
    from mlflow import MlflowClient

    from armada_ray.embed import run_embed
    from armada_ray.train.trainer import run_train

    def cfg(*extra: str):
        return load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", *SMALL, *extra])

    run_embed(cfg())
    whole = run_train(cfg("run_name=uninterrupted", "tracking.enabled=false"))
    target = cfg("run_name=killed")
    killed: dict = {}
    watcher = threading.Thread(target=_kill_the_worker_after_epoch_one,
                               args=(target.run_dir, killed, time.monotonic() + 600), daemon=True)
    watcher.start()
    resumed = run_train(target)
    watcher.join(timeout=5)
    assert killed.get("pid"), "the worker was never killed (training ended before epoch 1 was registered?)"
    assert killed["after_epochs"] and max(killed["after_epochs"]) < 3, killed

    def history(summary: dict) -> list[dict]:
        return json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["history"]

    h_whole, h_killed = history(whole), history(resumed)
    assert [h["epoch"] for h in h_killed] == [1, 2, 3]
    after = max(killed["after_epochs"]) + 1  # the first epoch run by the restarted worker group
    # tolerance as in test_train's resume test: DeepSpeed, aligner and every rank's RNG state are restored
    assert h_killed[after - 1]["first_step_loss"] == pytest.approx(h_whole[after - 1]["first_step_loss"], rel=1e-5)

    client = MlflowClient(target.tracking_uri)
    exp = client.get_experiment_by_name(target.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'killed'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].info.run_id == resumed["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    # an epoch re-run after the restart is logged again at its step (MLflow keeps both points); the last point of
    # every step is the run's final history
    points = client.get_metric_history(runs[0].info.run_id, "dev_metric")
    assert {m.step for m in points} == {1, 2, 3}
    last = {m.step: m.value for m in sorted(points, key=lambda m: m.timestamp)}
    assert [last[e] for e in (1, 2, 3)] == pytest.approx([h["dev_metric"] for h in h_killed])
