"""The preflight: one table, a refusal with the failing checks' numbers, and the automatic run in submitted jobs."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _paths import JOBS

from armada_ray.config import ConfigError, load_config
from armada_ray.plan import check_cluster, place_workers
from armada_ray.preflight import format_table, preflight_if_submitted, probe_http_teacher, run_preflight

# a 2-node, 1-CPU-per-node cluster as ray.nodes() would describe it (the preflight's input, no Ray needed)
TWO_NODES = {"source": "test cluster", "nodes": [
    {"node_id": "a", "ip": "127.0.0.1", "CPU": 1.0, "GPU": 0.0, "memory_gib": 8.0, "accelerator": None},
    {"node_id": "b", "ip": "127.0.0.1", "CPU": 1.0, "GPU": 0.0, "memory_gib": 8.0, "accelerator": None},
]}
ONE_CPU = {"source": "test cluster", "nodes": [
    {"node_id": "a", "ip": "127.0.0.1", "CPU": 1.0, "GPU": 0.0, "memory_gib": 16.0, "accelerator": None}]}


def smoke_cfg(tmp_path: Path, *overrides: str):
    return load_config(JOBS / "cluster_smoke.yaml", [f"paths.work_dir={tmp_path}", *overrides])


def fill_cache(cfg) -> int:
    """Embed every prompt of the task in-process with the config's (hf) teacher, into its cache."""
    from armada_ray.cache import TeacherCache
    from armada_ray.tasks import load_task
    from armada_ray.teachers.factory import build_teacher
    from armada_ray.teachers.prompts import teacher_prompt

    teacher = build_teacher(cfg.teacher, device="cpu")
    data = load_task(cfg.task)
    prompts = sorted({teacher_prompt(cfg.teacher, data.spec, ex) for s in ("train", "dev", "test")
                      for ex in data.split(s)})
    cache = TeacherCache(cfg.cache_root, teacher.fingerprint(), int(teacher.dim), cfg.cache.dtype)
    cache.write_shard([cache.key_for(p) for p in prompts], teacher.embed(prompts))
    return len(prompts)


IMPOSSIBLE = ("student.model=llama3-8b-shape", "student.lora.enabled=false", "scaling.num_workers=1",
              "scaling.cpus_per_worker=1", "student.max_length=128", "train.batch_size=8")


def test_refuses_an_impossible_plan_with_its_numbers(tmp_path, capsys):
    cfg = smoke_cfg(tmp_path, *IMPOSSIBLE)
    with pytest.raises(ConfigError) as e:
        run_preflight(cfg, "train", resources=ONE_CPU)
    text = "\n".join(e.value.problems)
    out = capsys.readouterr().out
    assert "preflight refused `armada train`" in text
    # check 5 (memory): full fine-tuning of 7.5 B parameters in fp32 on one 16 GiB CPU worker
    mem = re.search(r"check 5 memory: plan does not fit: llama3-8b-shape \(7,505M params, 7,504\.9M trainable\) at ZeRO-2, "
                    r"1 worker\(s\), batch 8 x seq 128: ~(\d+\.\d) GiB per worker .*> (\d+\.\d) GiB available", text)
    assert mem, text
    assert float(mem.group(1)) > 100 and float(mem.group(2)) == pytest.approx(16 * 0.9, abs=0.05)
    # check 4 (cache): nothing embedded yet for this teacher
    assert re.search(r"check 4 cache: train 0/\d+, dev 0/\d+, test 0/\d+ unique prompts", text), text
    # one table with every check, the failing ones marked FAIL
    for n, name in enumerate(("config", "task", "teacher", "cache", "memory", "cluster", "tracking"), 1):
        assert re.search(rf"^\s*{n}\s+{name}\s+(ok|FAIL|skip)\s", out, re.M), out
    assert re.search(r"^\s*5\s+memory\s+FAIL", out, re.M)
    assert re.search(r"^\s*3\s+teacher\s+ok\s+hf model 'minilm' resolves", out, re.M)


def test_passes_the_demo_sized_plan_once_the_cache_is_filled(tmp_path, capsys):
    cfg = smoke_cfg(tmp_path)
    assert fill_cache(cfg) > 0
    result = run_preflight(cfg, "train", resources=TWO_NODES)
    out = capsys.readouterr().out
    assert result["preflight"] == "ok"
    assert [c["status"] for c in result["checks"]] == ["ok"] * 7, out
    assert result["cache_train_cached"] == result["cache_train_prompts"] > 0
    assert result["cache_dev_cached"] == result["cache_dev_prompts"] > 0
    assert result["memory_gib_per_worker"] < result["memory_available_gib"]
    assert "2 worker(s) x (1 CPU, 0 GPU) fit (1+1 per node)" in out
    # the same config with more workers than the cluster holds is refused by check 6
    with pytest.raises(ConfigError, match=r"check 6 cluster: 3 worker\(s\) x \(1 CPU, 0 GPU\) do not fit: 2 of 3"):
        run_preflight(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"num_workers": 3})}),
                      "train", resources=TWO_NODES)


def test_embed_reports_work_left_and_refuses_an_api_without_its_key(tmp_path, monkeypatch):
    cfg = smoke_cfg(tmp_path)
    res = run_preflight(cfg, "embed", resources=TWO_NODES)
    assert res["cache_train_cached"] == 0 and res["cache_train_prompts"] > 0
    assert {c["check"]: c["status"] for c in res["checks"]}["memory"] == "skip"
    monkeypatch.delenv("ARMADA_TEST_KEY", raising=False)
    api = load_config(JOBS / "embed_api.yaml", [f"paths.work_dir={tmp_path}", "teacher.endpoint=http://127.0.0.1:9/v1",
                                                "teacher.api_key_env=ARMADA_TEST_KEY", "task.name=pang_lee_polarity"])
    with pytest.raises(ConfigError, match=r"check 3 teacher: .*ARMADA_TEST_KEY is not set"):
        run_preflight(api, "embed", resources=TWO_NODES)


class _Api(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict]] = {}

    def _answer(self) -> None:
        status, body = self.routes.get(self.path, (404, {"error": {"message": "no route"}}))
        if self.headers.get("Authorization") != "Bearer right-key":
            status, body = 401, {"error": {"message": "bad key"}}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_http_teacher_probe(api_server, monkeypatch, tmp_path):
    monkeypatch.setenv("ARMADA_TEST_KEY", "right-key")
    teacher = load_config(None, [f"teacher.endpoint={api_server}", "teacher.model=emb",
                                 "teacher.api_key_env=ARMADA_TEST_KEY"]).teacher
    _Api.routes = {"/v1/models": (200, {"data": [{"id": "emb"}]})}
    assert "answered GET /models (HTTP 200, model 'emb' listed)" in probe_http_teacher(teacher)
    _Api.routes = {"/v1/embeddings": (200, {"data": [{"embedding": [0.1] * 7}]})}  # no /models route
    assert "one-text /embeddings probe (dimension 7)" in probe_http_teacher(teacher)
    monkeypatch.setenv("ARMADA_TEST_KEY", "wrong-key")
    with pytest.raises(RuntimeError, match=r"refused the credentials \(HTTP 401\) in \$ARMADA_TEST_KEY"):
        probe_http_teacher(teacher)
    dead = teacher.model_copy(update={"endpoint": "http://127.0.0.1:9/v1"})
    with pytest.raises(RuntimeError, match="does not answer"):
        probe_http_teacher(dead)


def test_place_workers_packs_nodes_and_never_splits_a_worker():
    nodes = [{"CPU": 4, "GPU": 2}, {"CPU": 8, "GPU": 8}, {"CPU": 1, "GPU": 0}]
    assert place_workers(nodes, 8, cpus=1, gpus=1) == [0, 8, 0]
    assert sum(place_workers(nodes, 11, cpus=1, gpus=1)) == 10
    assert place_workers(nodes, 3, cpus=4, gpus=0) == [1, 2, 0]
    assert sum(place_workers(nodes, 2, cpus=1.5, gpus=0)) == 2
    assert "#  check" in format_table([])


def test_runs_only_in_submitted_jobs_and_refuses_before_training(tmp_path, monkeypatch, capsys):
    from armada_ray.cli import main

    cfg = smoke_cfg(tmp_path, *IMPOSSIBLE)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert preflight_if_submitted(cfg, "train") is None  # a plain `armada train`: check_plan only
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_test"}}))
    monkeypatch.setenv("ARMADA_SKIP_PREFLIGHT", "1")
    assert preflight_if_submitted(cfg, "train") is None
    monkeypatch.delenv("ARMADA_SKIP_PREFLIGHT")
    # the CLI runs it once, before `armada train` starts: it refuses before Ray or any worker starts
    rc = main(["train", "--config", str(JOBS / "cluster_smoke.yaml"), f"paths.work_dir={tmp_path}", *IMPOSSIBLE])
    captured = capsys.readouterr()
    assert rc == 2 and "preflight refused `armada train`" in captured.err
    assert captured.out.count("preflight for `armada train`") == 1


def test_cli_preflight_flag_exits_2_with_the_reason(tmp_path, capsys):
    from armada_ray.cli import main

    rc = main(["train", "--config", str(JOBS / "cluster_smoke.yaml"), "--preflight", f"paths.work_dir={tmp_path}",
               *IMPOSSIBLE])
    captured = capsys.readouterr()
    assert rc == 2
    assert "preflight refused `armada train`" in captured.err and "check 5 memory" in captured.err
    assert re.search(r"^\s*5\s+memory\s+FAIL", captured.out, re.M)


def test_a_submitted_driver_does_not_repeat_the_jobs_env_vars(monkeypatch):
    """Ray refuses to merge ray.init's runtime env into the job's when both name one env var; ensure_ray drops them."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from armada_ray.ray_utils import without_job_env_vars

    job = {"env_vars": {"HF_HUB_OFFLINE": "1", "ARMADA_CACHE_DIR": "/c"}}
    mine = {"env_vars": {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}}
    assert _merge_runtime_env(job, mine) is None  # what `armada train` hit as a submitted job before
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job, "metadata": {}}))
    fixed = without_job_env_vars(mine)
    assert fixed == {"env_vars": {"DS_ACCELERATOR": "cpu"}}
    assert _merge_runtime_env(job, fixed) == {"env_vars": {**job["env_vars"], "DS_ACCELERATOR": "cpu"}}
    assert without_job_env_vars({"env_vars": {"ARMADA_CACHE_DIR": "/c"}}) == {}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert without_job_env_vars(mine) == mine  # not a submitted job: unchanged


GPU_JOBS = ["glue_llama3_8b.yaml", "glue_deberta_xxlarge.yaml", "reasoning.yaml", "sweep_alpha_beta.yaml",
            "embed_sd_gpu.yaml"]


@pytest.mark.parametrize("job", GPU_JOBS)
def test_gpu_jobs_fit_their_autoscaling_cluster_with_no_gpu_node_alive(job, monkeypatch):
    """Issue 15: the GPU groups scale from zero, so no GPU node is alive when a job starts; sized on the cluster's
    description at full scale (scaling.cluster_spec), every GPU job's plan fits, for training and for embedding."""
    from armada_ray.cluster_spec import nodes_from_spec

    monkeypatch.chdir(JOBS.parent)  # the job's relative path, as in a submitted job's working dir
    cfg = load_config(JOBS / job, [])
    assert cfg.scaling.cluster_spec, f"{job} names no scaling.cluster_spec"
    res = nodes_from_spec(cfg.scaling.cluster_spec)
    assert not any(n["GPU"] for n in res["nodes"] if n["node_type"] == "head")
    for command in ("train", "embed"):
        check = check_cluster(cfg, command, res)
        assert check.status == "ok", (job, command, check.detail)


def test_the_cluster_description_still_refuses_a_plan_no_node_type_can_hold(monkeypatch, capsys):
    from armada_ray.cluster_spec import nodes_from_spec

    monkeypatch.chdir(JOBS.parent)
    # 40 one-GPU workers: the H100 group tops out at 4 nodes x 8 GPUs
    cfg = load_config(JOBS / "glue_llama3_8b.yaml", ["scaling.num_workers=40"])
    with pytest.raises(ConfigError, match=r"check \d cluster: 40 worker\(s\) x \(8 CPU, 1 GPU\) do not fit: 32 of 40"):
        run_preflight(cfg, "train", resources=nodes_from_spec(cfg.scaling.cluster_spec))
    assert "cluster/kuberay/raycluster.yaml at full scale" in capsys.readouterr().out
    # the Ray cluster launcher's format too, with its global max_workers cap: 2 H100 + 4 A10G nodes
    launcher = nodes_from_spec("cluster/autoscaler.yaml")
    assert sorted(n["GPU"] for n in launcher["nodes"]) == [0, 4, 4, 4, 4, 8, 8]


def test_a_cluster_description_that_cannot_be_read_is_named(tmp_path):
    from armada_ray.cluster_spec import nodes_from_spec

    with pytest.raises(ConfigError, match="no such file"):
        nodes_from_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "c.yaml"
    bad.write_text("available_node_types:\n  gpu: {max_workers: 2, resources: {}}\n")
    with pytest.raises(ConfigError, match=r"available_node_types.gpu.resources declares no CPU"):
        nodes_from_spec(bad)
    bad.write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match="neither a Ray cluster-launcher config"):
        nodes_from_spec(bad)
