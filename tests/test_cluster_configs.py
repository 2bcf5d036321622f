"""The cluster files validate: the autoscaler YAML against Ray's own schema, the KubeRay manifests' structure,
the jobs README against the jobs folder, the runtime env against Ray's RuntimeEnv. No cluster is started."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from _paths import ROOT

CLUSTER = ROOT / "cluster"
sys.path.insert(0, str(CLUSTER))

import local_cluster  # noqa: E402


def ray_schema() -> dict:
    import ray

    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"  # the schema Ray ships and `ray up` uses
    return json.loads(path.read_text())


def test_autoscaler_yaml_validates_against_rays_schema():
    cfg = yaml.safe_load((CLUSTER / "autoscaler.yaml").read_text())
    schema = ray_schema()
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu_types = {t["node_config"]["InstanceType"] for name, t in cfg["available_node_types"].items()
                 if name != cfg["head_node_type"]}
    assert gpu_types == {"p5.48xlarge", "g5.12xlarge"}
    assert any("pip install" in c and "armada-ray" in c for c in cfg["setup_commands"])
    # the validator is live: a misspelled key is rejected
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_h100"]["max_worker"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def _check_ray_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["name"] == "ray-head"
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu, "no GPU worker group"
    limits = gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 8
    assert gpu[0]["maxReplicas"] >= gpu[0]["minReplicas"]
    mounts = {m["mountPath"] for m in gpu[0]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/mnt/shared" in mounts  # jobs/*.yaml keep cache and checkpoints on the shared volume


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    docs = _docs(name)
    by_kind = {d["kind"]: d for d in docs}
    ray_obj = by_kind[kind]
    assert ray_obj["apiVersion"] == "ray.io/v1"
    # the MLflow server as a Deployment + Service named as in the jobs' tracking.uri (http://mlflow:5000)
    svc, dep = by_kind["Service"], by_kind["Deployment"]
    assert svc["metadata"]["name"] == "mlflow" and svc["spec"]["ports"][0]["port"] == 5000
    assert dep["spec"]["template"]["metadata"]["labels"] == svc["spec"]["selector"]
    assert "server" in dep["spec"]["template"]["spec"]["containers"][0]["command"]
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs["armada-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # MLflow's SQLite store on a volume of its own, one writer (SQLite locking over NFS is unreliable; issue 15)
    assert pvcs["mlflow-db"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--workers=1" in args and "--backend-store-uri=sqlite:////mnt/mlflow-db/mlflow.db" in args
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    mounts = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert mounts["mlflow-db"]["persistentVolumeClaim"]["claimName"] == "mlflow-db"
    if kind == "RayCluster":
        _check_ray_cluster_spec(ray_obj["spec"])
    else:
        assert ray_obj["spec"]["entrypoint"] == "armada tune --config jobs/sweep_alpha_beta.yaml"
        assert (ROOT / "jobs" / "sweep_alpha_beta.yaml").is_file()
        assert ray_obj["spec"]["shutdownAfterJobFinishes"] is True
        yaml.safe_load(ray_obj["spec"]["runtimeEnvYAML"])
        _check_ray_cluster_spec(ray_obj["spec"]["rayClusterSpec"])


def test_cluster_jobs_log_to_the_kuberay_mlflow_service():
    from armada_ray.config import load_config

    for name in ("glue_llama3_8b", "glue_deberta_xxlarge", "sweep_alpha_beta", "reasoning"):
        assert load_config(ROOT / "jobs" / f"{name}.yaml").tracking.uri == "http://mlflow:5000"


def test_jobs_readme_lists_every_job_with_its_submit_line():
    readme = (ROOT / "jobs" / "README.md").read_text()
    for f in sorted((ROOT / "jobs").glob("*.yaml")):
        if f.name == "runtime_env.yaml":
            continue
        assert f"`{f.name}`" in readme, f.name
        assert re.search(rf"ray job submit --address \S+ --working-dir \. .*--config jobs/{re.escape(f.name)}",
                         readme), f.name


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**data)
    assert "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in env["pip"]["packages"][0]
    assert env["env_vars"]["RAY_DEDUP_LOGS"] == "0"


def test_session_members_and_stop_touch_only_the_session_we_started():
    # a stand-in "node": a shell that starts a child, in its own session, like `ray start` under setsid
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60; wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(local_cluster.session_members(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = local_cluster.session_members(proc.pid)
        assert proc.pid in members and len(members) == 3
        assert os.getpid() not in members
        local_cluster.stop_session(proc.pid, grace_s=2)
        assert local_cluster.session_members(proc.pid) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(set(local_cluster.free_ports(12))) == 12
