"""A real two-node Ray cluster on this machine (loopback): jobs go in through Ray's own CLI (`ray job submit`).

- The demo-sized embed + train job trains with one worker on each node (each rank logs its node id), and its
  MLflow run lands in the sqlite store of its work_dir.
- The worker node is killed (SIGKILL of its whole session) mid-training; a replacement node joins, as an
  autoscaler would start one, and the job resumes from its last checkpoint, or fails with a clear message.
  Every wait is bounded: a job that does not finish in time is stopped and the test fails saying so.

The cluster is stopped by PID / process group (cluster/local_cluster.py), never with `ray stop`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _paths import ROOT
from _ray_train import registered_epochs

sys.path.insert(0, str(ROOT / "cluster"))

from local_cluster import LocalCluster, ray_executable, session_members  # noqa: E402

pytestmark = pytest.mark.slow

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_TIMEOUT_S = 340  # each test stays under ~6 minutes including cluster start-up


def job_env_vars() -> dict[str, str]:
    """The job's runtime-env env vars: offline, the shared model/extension caches, per-rank log lines."""
    keep = ("ARMADA_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "HF_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", DS_ACCELERATOR="cpu",
               TOKENIZERS_PARALLELISM="false", MLFLOW_ENABLE_ASYNC_LOGGING="false", RAY_DEDUP_LOGS="0",
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(num_workers=1, cpus_per_node=1, state_dir=str(tmp_path_factory.mktemp("cluster")))
    t0 = time.monotonic()
    c.start()
    print(f"cluster of 2 nodes up in {time.monotonic() - t0:.0f} s: {c.address}, {c.dashboard_url}")
    try:
        yield c
    finally:
        nodes = list(c.nodes)
        c.stop()
        left = {n.role: session_members(n.pid) for n in nodes}
        assert not any(left.values()), f"processes left after stop: {left}"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("armada_work")


def ray_cli(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ray_executable(), *args], capture_output=True, text=True, timeout=timeout,
                          env=cluster.env(), cwd=ROOT)


def submit(cluster: LocalCluster, overrides: list[str], tag: str, cmd: str | None = None) -> str:
    """`ray job submit` (the CLI) of ``cmd`` (default: embed && train on jobs/cluster_smoke.yaml); returns the
    submission id."""
    ov = " ".join(overrides)
    cmd = cmd or (f"armada embed --config jobs/cluster_smoke.yaml {ov} && "
                  f"armada train --config jobs/cluster_smoke.yaml {ov} --json")
    sub_id = f"armada-{tag}-{uuid.uuid4().hex[:6]}"
    out = ray_cli(cluster, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
                  "--runtime-env-json", json.dumps({"env_vars": job_env_vars()}), "--submission-id", sub_id,
                  "--no-wait", "--", "bash", "-c", cmd, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return sub_id


def job_status(cluster: LocalCluster, sub_id: str) -> str:
    """`ray job status`: "Job 'x' succeeded|failed|was stopped" when terminal, else "Status for job 'x': RUNNING"."""
    out = ray_cli(cluster, "job", "status", sub_id, "--address", cluster.dashboard_url)
    text = out.stdout + out.stderr
    ended = re.search(rf"Job '{re.escape(sub_id)}' (succeeded|failed|was stopped)", text)
    if ended:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
    m = re.search(rf"Status for job '{re.escape(sub_id)}': (\w+)", text)
    return m.group(1) if m else "UNKNOWN"


def job_logs(cluster: LocalCluster, sub_id: str) -> str:
    return ray_cli(cluster, "job", "logs", sub_id, "--address", cluster.dashboard_url).stdout


def wait_for(cluster: LocalCluster, sub_id: str, deadline: float, until=None) -> str:
    """Poll until the job is terminal (or ``until()`` is true); stop the job at the deadline."""
    last_status = 0.0
    while time.monotonic() < deadline:
        if until is not None and until():
            return "CONDITION"
        if time.monotonic() - last_status > 10:
            last_status = time.monotonic()
            status = job_status(cluster, sub_id)
            if status in TERMINAL:
                return status
        time.sleep(1.0)
    ray_cli(cluster, "job", "stop", sub_id, "--address", cluster.dashboard_url, "--no-wait")
    tail = "\n".join(job_logs(cluster, sub_id).splitlines()[-40:])
    pytest.fail(f"job {sub_id} did not finish in time (stopped); last log lines:\n{tail}")


def last_json(logs: str) -> dict:
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise AssertionError("no JSON result line in the job's logs")


def placements(logs: str) -> dict[int, str]:
    return {int(r): node for r, node in re.findall(r"placement: rank (\d+) of 2 on node_id=([0-9a-f]+)", logs)}


def test_submitted_job_trains_on_both_nodes_and_lands_in_mlflow(cluster, work_dir):
    t0 = time.monotonic()
    sub_id = submit(cluster, [f"paths.work_dir={work_dir}", "run_name=two-nodes"], "both")
    status = wait_for(cluster, sub_id, time.monotonic() + JOB_TIMEOUT_S)
    logs = job_logs(cluster, sub_id)
    assert status == "SUCCEEDED", "\n".join(logs.splitlines()[-60:])
    print(f"job {sub_id} SUCCEEDED in {time.monotonic() - t0:.0f} s")

    # the preflight ran before each stage of the submitted job
    assert "preflight for `armada embed`" in logs and "preflight for `armada train`" in logs
    # placement: rank 0 and rank 1 on the two different nodes of this cluster
    ranks = placements(logs)
    node_ids = {n["node_id"] for n in cluster.list_nodes() if n.get("state") == "ALIVE"}
    assert set(ranks) == {0, 1}, logs[-3000:]
    assert ranks[0] != ranks[1] and set(ranks.values()) == node_ids, (ranks, node_ids)

    # the MLflow run exists in the job's sqlite store, finished, with the epoch metrics
    from mlflow import MlflowClient

    result = last_json(logs)
    assert result["tracking_uri"] == f"sqlite:///{work_dir.resolve() / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=result["tracking_uri"]).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "dev_metric" in run.data.metrics and run.data.tags.get("armada.task") == "pang_lee_polarity"
    print("MLflow run", run.info.run_id, {k: v for k, v in run.data.tags.items() if "ray" in k})

    # issue 15: on a cluster `armada export` runs as a Ray task with a training rank's resources, not in the driver
    ov = f"paths.work_dir={work_dir} run_name=two-nodes"
    sub_id = submit(cluster, [], "export", cmd=f"armada export --config jobs/cluster_smoke.yaml {ov} --json")
    status = wait_for(cluster, sub_id, time.monotonic() + 300)
    logs = job_logs(cluster, sub_id)
    assert status == "SUCCEEDED", "\n".join(logs.splitlines()[-40:])
    exported = last_json(logs)
    assert exported["ran_in"]["ray_task"] and exported["ran_in"]["node_id"] in node_ids
    assert (Path(exported["export_dir"]) / "armada_student.json").is_file()


def test_worker_node_killed_mid_training_resumes_from_its_checkpoint(cluster, work_dir):
    t0 = time.monotonic()
    deadline = t0 + JOB_TIMEOUT_S
    epochs = 4
    run_dir = work_dir.resolve() / "runs" / "cluster_smoke" / "node-kill"
    sub_id = submit(cluster, [f"paths.work_dir={work_dir}", "run_name=node-kill", f"train.epochs={epochs}"], "kill")
    # wait until the first epoch's checkpoint is registered by the Train controller (a checkpoint that is only
    # reported, not yet taken by the controller's poll, dies with the worker), then kill the worker node
    got = wait_for(cluster, sub_id, deadline, until=lambda: bool(registered_epochs(run_dir / "ray" / "train")))
    assert got == "CONDITION", f"the job ended ({got}) before its first checkpoint"
    assert max(registered_epochs(run_dir / "ray" / "train")) < epochs, "training finished before the kill"
    victim = next(n for n in cluster.nodes if n.index != 0 and not n.stopped)
    cluster.kill_node(victim)
    print(f"killed {victim.role} (session {victim.pid}) at {time.monotonic() - t0:.0f} s")
    gone_by = time.monotonic() + 15
    while session_members(victim.pid) and time.monotonic() < gone_by:
        time.sleep(0.2)
    assert session_members(victim.pid) == []
    # a replacement node joins, as the autoscaler would start one; Ray Train restarts the worker group on it
    cluster.add_worker()
    status = wait_for(cluster, sub_id, deadline)
    logs = job_logs(cluster, sub_id)
    print(f"job {sub_id}: {status} after {time.monotonic() - t0:.0f} s")
    if status == "SUCCEEDED":
        resumed = [int(e) for e in re.findall(r"resumed from checkpoint after epoch (\d+)", logs)]
        assert resumed and min(resumed) >= 1, "\n".join(logs.splitlines()[-60:])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["epochs"] == epochs and [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
        print(f"resumed after epoch {min(resumed)} on a replacement node; {epochs} epochs in all")
    else:  # the other accepted outcome: a clear failure, not a hang
        assert status == "FAILED"
        assert re.search(r"armada train: error: \w+", logs), "\n".join(logs.splitlines()[-60:])
