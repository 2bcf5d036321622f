"""A Ray Train worker SIGKILLed mid-training (issue 13): Ray Train restarts the worker group from the last registered
checkpoint (``scaling.max_failures``), the run ends with every epoch, the epoch after the kill starts from the same
loss as an uninterrupted run, and the trial is still exactly one MLflow run (the checkpoint carries its run id).
Real local Ray, real DeepSpeed, a real MLflow store; the kill is a real SIGKILL of the worker's process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _paths import JOBS
from _ray_train import registered_epochs

from armada_ray.config import load_config

SMALL = ["task.name=pang_lee_polarity", "task.max_train=32", "task.max_dev=16", "task.max_test=16",
         "student.max_length=64", "train.batch_size=8", "train.report_every=2",
         "student.model=minilm", "student.lora.enabled=false", "teacher={kind: hf, model: minilm, stand_in: true}",
         "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=3", "train.lr=0.001", "scaling.max_failures=1",
         "scaling.cpus_per_worker=1"]


def _kill_the_worker_after_epoch_one(run_dir: Path, killed: dict, deadline: float) -> None:
    """SIGKILL the training worker as soon as epoch 1's checkpoint is registered. An epoch here takes ~3 s, and a
    Ray state API call can take longer under load, so the worker's PID is looked up while epoch 1 runs and the
    kill itself needs no Ray call (looking it up after the registration let the run finish first)."""
    import ray

    # this session's Ray by its address: with another local Ray on the machine (benchmarks/faults.py runs this
    # test beside its own), the state API refuses to guess ("Found multiple active Ray instances")
    try:
        _watch_and_kill(run_dir / "ray" / "train", killed, deadline, ray.get_runtime_context().gcs_address)
    except Exception as exc:  # noqa: BLE001 - a dying thread says nothing; the test's assertion shows this
        killed["watcher_error"] = f"{type(exc).__name__}: {exc}"


def _watch_and_kill(train_dir: Path, killed: dict, deadline: float, address: str) -> None:
    from ray.util.state import list_actors

    pids: list[int] = []
    next_lookup = 0.0
    while time.monotonic() < deadline:
        if 1 in registered_epochs(train_dir) and pids:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # a worker of the previous run that the state API still listed
                    continue
                killed["pid"], killed["after_epochs"] = pid, registered_epochs(train_dir)
            return
        if time.monotonic() >= next_lookup:
            alive = list_actors(address=address,
                                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            pids = [a.pid for a in alive if a.pid]
            next_lookup = time.monotonic() + 1.0
        time.sleep(0.1)


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
    assert killed.get("pid"), (
        f"the worker was never killed: {killed}; registered at the end: "
        f"{registered_epochs(target.run_dir / 'ray' / 'train')} under {target.run_dir}")
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


SWEEP = [*SMALL, "train.epochs=2", "tune.num_samples=2", "tune.max_concurrent_trials=1", "tune.scheduler=fifo",
         "tune.include_baseline=false", "tune.seeds=[]", "run_name=sweep-killed"]


def _tune_driver(work: Path, address: str, log: Path, *extra: str) -> subprocess.Popen:
    """``armada tune`` as a user runs it against a running cluster (here: this session's local Ray)."""
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "armada_ray.cli", "tune", "--config", str(JOBS / "demo.yaml"),
                             f"paths.work_dir={work}", *SWEEP, *extra, "--json"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_killed_sweep_driver_is_restored_with_no_duplicate_trial_runs(tmp_path, ray_local):
    """The sweep's driver SIGKILLed while its first trial is mid-training; ``resume=true`` restores the sweep: the
    interrupted trial continues from its last registered checkpoint (its first epoch is not trained again), the
    other trial runs, and MLflow holds one parent with exactly one child per trial, all finished."""
    from mlflow import MlflowClient

    from armada_ray.embed import run_embed

    run_embed(load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", *SMALL]))
    address = ray_local.get_runtime_context().gcs_address
    sweep_dir = tmp_path / "runs" / "demo" / "sweep-killed"
    first = _tune_driver(tmp_path, address, tmp_path / "first.log")
    deadline, at_kill = time.monotonic() + 600, None
    while time.monotonic() < deadline and first.poll() is None:
        done = {p.parents[2].name: registered_epochs(p.parent)
                for p in sweep_dir.glob("trial-*/ray/trial-*/checkpoint_manager_snapshot.json")}
        if any(1 in e for e in done.values()):
            os.kill(first.pid, signal.SIGKILL)
            at_kill = done
            break
        time.sleep(0.3)
    first.wait(timeout=30)
    log = (tmp_path / "first.log").read_text()
    assert at_kill is not None, f"the driver was never killed mid-trial (rc {first.returncode}):\n{log[-3000:]}"
    assert all(max(e, default=0) < 2 for e in at_kill.values()), at_kill  # no trial had finished

    second = _tune_driver(tmp_path, address, tmp_path / "second.log", "resume=true")
    rc = second.wait(timeout=900)
    out = (tmp_path / "second.log").read_text()
    assert rc == 0, out[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["trials"] == 2 and result["trials_errored"] == 0, result
    assert f"resuming {sweep_dir}" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("armada.kind") == "sweep"]
    assert [p.info.run_name for p in parents] == ["sweep-killed"], [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.run_id == result["mlflow_parent_run_id"] and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    names = sorted(r.info.run_name for r in children)
    assert len(names) == 2 and len(set(names)) == 2, names  # one run per trial, none opened twice
    assert {r.data.tags.get("armada.kind") for r in children} == {"trial"}
    assert all(r.info.status == "FINISHED" for r in children), [(r.info.run_name, r.info.status) for r in children]
    interrupted = [r for r in children if r.info.run_name.endswith(next(iter(at_kill)))]
    assert len(interrupted) == 1, (names, at_kill)
    points = client.get_metric_history(interrupted[0].info.run_id, "dev_metric")
    # the interrupted trial resumed from its epoch-1 checkpoint: epoch 1 was trained (and logged) once
    assert sorted(m.step for m in points) == [1, 2], [(m.step, m.value) for m in points]
