"""RunTracker against real MLflow stores: a sqlite file, and a real ``mlflow server`` on loopback."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from _net import free_port
from mlflow import MlflowClient

from armada_ray.cache import dataset_view
from armada_ray.config import ArmadaConfig, load_config
from armada_ray.plots import plot_dev_curves
from armada_ray.tracking import (
    KIND_SWEEP,
    KIND_TRIAL,
    RunTracker,
    TrackingFallbackWarning,
    TrackingUnavailable,
    run_ui,
    standard_tags,
    start_sweep_parent,
)
from armada_ray.tracking.scrub import is_secret_name, scrub_params
from armada_ray.tracking.tags import (
    MLFLOW_PARENT_TAG,
    TAG_KIND,
    TAG_STAND_IN,
    TAG_STUDENT,
    TAG_TASK,
    TAG_TEACHER_FINGERPRINT,
    git_commit,
)
from armada_ray.tracking.tracker import FALLBACK_FILE
from armada_ray.tracking.ui import group_alive, start_mlflow_server

FAKE_KEY = "sk-armada-test-0123456789abcdef"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite store for the module (creating one costs seconds); each test uses its own experiment."""
    return tmp_path_factory.mktemp("tracking")


def make_cfg(work_dir: Path, name: str, *overrides: str) -> ArmadaConfig:
    return load_config(None, [f"paths.work_dir={work_dir}", f"name={name}", *overrides])


def client_for(cfg: ArmadaConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def read_fallback(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "fingerprint_id": "fp-0123abcd",
        "fingerprint": {"kind": "http", "model": "minilm-stand-in"},
        "dim": 384,
        "dtype": "float16",
        "rows": 30,
        "shards": [{"path": "shard-00000.parquet", "rows": 16, "sha256": "aa"},
                   {"path": "shard-00001.parquet", "rows": 14, "sha256": "bb"}],
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


# ------------------------------------------------------------------------------------------ sqlite


def test_sweep_parent_with_two_children_reads_back(work_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(work_dir, "sweep-roundtrip", "teacher.kind=http", "teacher.stand_in=true", "task.name=bbc_topics")
    parent = start_sweep_parent(cfg, "sweep-1")
    assert parent.url == (f"http://127.0.0.1:5000/#/experiments/{parent.experiment_id}/runs/{parent.run_id}"
                          "?workflowType=machine_learning")  # MLflow 3 opens on its GenAI view otherwise
    manifest = write_manifest(tmp_path / "cache")
    children = []
    for i in range(2):
        child = RunTracker.start(
            cfg, f"trial-{i}", KIND_TRIAL, parent_run_id=parent.run_id, tags=standard_tags(cfg, "fp-0123abcd"),
            local_dir=tmp_path / f"trial-{i}",
        )
        child.log_params({"loss": {"alpha": 0.25 * (i + 1)}, "trial": i})
        for epoch in range(3):
            child.log_metrics({"dev_metric": 0.5 + 0.1 * epoch + i, "train/loss_total": np.float32(1.0 / (epoch + 1))},
                              step=epoch)
        note = tmp_path / f"note-{i}.txt"
        note.write_text("hello")
        child.log_artifact(note, "notes")
        child.log_figure(plot_dev_curves({"trial": [0.5, 0.6, 0.7]}), "plots/dev_curves.png")
        child.log_cache_dataset(dataset_view(manifest.parent))
        child.end()
        children.append(child)
    parent.log_metrics({"best_dev_metric": 1.7})
    parent.end()

    client = client_for(cfg)
    exp = client.get_experiment(parent.experiment_id)
    assert exp.name == "sweep-roundtrip"
    assert exp.artifact_location == (work_dir / "mlartifacts" / "sweep-roundtrip").as_uri()
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_TAG}` = '{parent.run_id}'")
    assert sorted(r.info.run_name for r in found) == ["trial-0", "trial-1"]

    p = client.get_run(parent.run_id)
    assert p.info.status == "FINISHED"
    assert p.data.tags[TAG_KIND] == KIND_SWEEP == "sweep"
    assert p.data.params["loss.alpha"] == str(cfg.loss.alpha)
    assert p.data.metrics["best_dev_metric"] == pytest.approx(1.7)
    assert "config.yaml" in [a.path for a in client.list_artifacts(parent.run_id)]

    for i, child in enumerate(children):
        run = client.get_run(child.run_id)
        tags = run.data.tags
        assert tags[TAG_KIND] == KIND_TRIAL == "trial"
        assert tags[MLFLOW_PARENT_TAG] == parent.run_id
        assert tags[TAG_TASK] == "bbc_topics" and tags[TAG_STUDENT] == cfg.student.model
        assert tags[TAG_STAND_IN] == "true" and tags[TAG_TEACHER_FINGERPRINT] == "fp-0123abcd"
        if git_commit():
            assert tags["armada.git_commit"] == git_commit()
        assert run.data.params["loss.alpha"] == str(0.25 * (i + 1))
        history = client.get_metric_history(child.run_id, "dev_metric")
        assert [m.step for m in history] == [0, 1, 2]
        assert history[-1].value == pytest.approx(0.7 + i)
        assert run.data.metrics["train/loss_total"] == pytest.approx(1 / 3, rel=1e-6)
        assert [a.path for a in client.list_artifacts(child.run_id, "notes")] == [f"notes/note-{i}.txt"]
        assert [a.path for a in client.list_artifacts(child.run_id, "plots")] == ["plots/dev_curves.png"]
        assert [a.path for a in client.list_artifacts(child.run_id, "teacher_cache")] == ["teacher_cache/manifest.json"]
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "teacher-cache-fp-0123abcd"
        assert dataset_input.dataset.digest == "fp-0123abcd"
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "teacher_cache"
        assert not (tmp_path / f"trial-{i}" / FALLBACK_FILE).exists()  # nothing fell back


def test_reattach_keeps_one_run(work_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(work_dir, "reattach")
    parent = RunTracker.start(cfg, "sweep", "sweep", local_dir=tmp_path)
    first = RunTracker.start(cfg, "trial-a", "trial", parent_run_id=parent.run_id, local_dir=tmp_path)
    first.log_params({"loss.alpha": 0.3})
    first.log_metrics({"dev_metric": 0.4}, step=0)
    first.end("FAILED")

    # the checkpoint remembered the run id: a restarted trial keeps its run
    again = RunTracker.start(cfg, "trial-a", "trial", parent_run_id=parent.run_id, run_id=first.run_id,
                             local_dir=tmp_path)
    assert again.run_id == first.run_id
    client = client_for(cfg)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.log_params({"loss.alpha": 0.3, "loss.beta": 2.0})  # same value again + a new one: fine
    with pytest.warns(TrackingFallbackWarning, match="already logged"):
        again.log_params({"loss.alpha": 0.9})  # MLflow refuses changed values: kept, warned, no exception
    clone = pickle.loads(pickle.dumps(again))  # e.g. handed to a Ray Train callback
    clone.log_metrics({"dev_metric": 0.5}, step=1)
    again.end()

    # no run id (failed before its first checkpoint): the same name under the same parent is reused
    third = RunTracker.start(cfg, "trial-a", "trial", parent_run_id=parent.run_id, local_dir=tmp_path)
    assert third.run_id == first.run_id
    third.end()

    runs = client.search_runs([parent.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sweep", "trial-a"]
    run = client.get_run(first.run_id)
    assert run.data.params["loss.alpha"] == "0.3" and run.data.params["loss.beta"] == "2.0"
    assert [m.step for m in client.get_metric_history(first.run_id, "dev_metric")] == [0, 1]
    assert run.info.status == "FINISHED"


def test_secrets_are_never_logged(work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMADA_TEST_TEACHER_KEY", FAKE_KEY)
    cfg = make_cfg(work_dir, "secrets", "teacher.kind=http", "teacher.api_key_env=ARMADA_TEST_TEACHER_KEY",
                   "teacher.tokens_per_min=9000")
    tracker = RunTracker.start(cfg, "train", "train", local_dir=tmp_path)
    tracker.log_config(cfg)
    tracker.log_params({
        "teacher.api_key": FAKE_KEY,
        "server.token": "tok-very-secret-123",
        "hub.hfToken": "hf_abcdefghijklmnop",
        "db.password": "hunter2hunter2",
        "notes.free_text": f"called with {FAKE_KEY} inline",
        "teacher.client_secret": None,
        "teacher.mirror": "https://bot:pa55word@mirror.example/v1",
    })
    tracker.end()
    params = client_for(cfg).get_run(tracker.run_id).data.params
    assert params["teacher.api_key_env"] == "ARMADA_TEST_TEACHER_KEY"  # the env var's name is fine
    assert params["teacher.tokens_per_min"] == "9000.0"  # not a secret
    for name in ("teacher.api_key", "server.token", "hub.hfToken", "db.password", "notes.free_text"):
        assert name not in params
    assert params["teacher.mirror"] == "https://bot:***@mirror.example/v1"
    assert not any(FAKE_KEY in v or "hunter2" in v or "tok-very" in v or "pa55" in v for v in params.values())
    config_yaml = Path(client_for(cfg).download_artifacts(tracker.run_id, "config.yaml", str(tmp_path / "dl")))
    assert FAKE_KEY not in config_yaml.read_text()

    assert is_secret_name("OPENAI_API_KEY") and not is_secret_name("teacher.api_key_env")
    kept, dropped = scrub_params({"a.token": "x" * 10, "a.token_env": "TOKEN", "max_tokens": 5})
    assert dropped == ["a.token"] and set(kept) == {"a.token_env", "max_tokens"}


def test_register_model_creates_versions(work_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(work_dir, "registry")
    export = tmp_path / "best"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "aligner").mkdir()
    (export / "aligner" / "aligner.safetensors").write_bytes(b"\0" * 64)
    tracker = RunTracker.start(cfg, "train", "train", tags=standard_tags(cfg, "fp-9"), local_dir=tmp_path)
    assert tracker.register_model(export, "armada-student") == 1
    assert tracker.register_model(export, "armada-student") == 2
    tracker.end()
    client = client_for(cfg)
    version = client.get_model_version("armada-student", "2")
    assert version.run_id == tracker.run_id
    assert version.source.endswith("/export")
    assert version.tags[TAG_TEACHER_FINGERPRINT] == "fp-9"
    listed = {a.path for a in client.list_artifacts(tracker.run_id, "export")}
    assert listed == {"export/config.json", "export/aligner"}


def test_disabled_tracker_writes_only_local_records(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "disabled", "tracking.enabled=false")
    tracker = RunTracker.start(cfg, "train", "train")
    assert not tracker.enabled and tracker.run_id is None and tracker.url is None
    tracker.log_config(cfg)
    tracker.log_metrics({"dev_metric": 0.5, "note": "skipped"}, step=3)
    tracker.log_figure(plot_dev_curves({"a": [0.1, 0.2]}), "plots/dev")
    assert tracker.register_model(tmp_path, "m") is None
    tracker.end()
    records = read_fallback(cfg.run_dir / FALLBACK_FILE)
    assert [r["op"] for r in records] == ["start", "params", "config", "metrics", "figure", "register_model", "end"]
    assert records[3]["metrics"] == {"dev_metric": 0.5} and records[3]["step"] == 3
    assert Path(records[4]["path"]).is_file() and records[4]["artifact_file"] == "plots/dev.png"
    assert not (tmp_path / "mlflow.db").exists()
    RunTracker.disabled().log_metrics({"x": 1.0})  # no folder at all: a pure no-op


def test_unreachable_server_at_start_is_one_clear_error(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = make_cfg(tmp_path, "down", f"tracking.uri={uri}")
    with pytest.raises(TrackingUnavailable) as info:
        RunTracker.start(cfg, "train", "train")
    message = str(info.value)
    assert uri in message and "tracking.enabled=false" in message and "tracking.uri=" in message
    assert "\n" not in message


def test_ui_with_a_remote_store_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_cfg(tmp_path, "remote", "tracking.uri=http://mlflow.example:5000")
    assert run_ui(cfg, port=free_port()) == {
        "url": "http://mlflow.example:5000", "tracking_uri": "http://mlflow.example:5000", "started": False,
    }
    assert "http://mlflow.example:5000" in capsys.readouterr().out


def test_tracking_module_does_not_import_ray() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import armada_ray.tracking, armada_ray.plots\n"
        "assert 'mlflow' not in sys.modules, 'mlflow is imported lazily'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------ real MLflow server


@pytest.mark.slow
def test_server_going_down_mid_run_falls_back_to_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    port = free_port()
    server = start_mlflow_server(backend, tmp_path / "server-artifacts", port)
    try:
        cfg = make_cfg(tmp_path / "work", "outage", f"tracking.uri={server.url}")
        tracker = RunTracker.start(cfg, "train", "train", local_dir=tmp_path / "run")
        assert tracker.url == (f"{server.url}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}"
                               "?workflowType=machine_learning")
        tracker.log_params({"loss.alpha": 0.5})
        tracker.log_metrics({"dev_metric": 0.1}, step=0)
    finally:
        assert server.stop() is not None
    assert not group_alive(server.pid)

    artifact = tmp_path / "after.txt"
    artifact.write_text("written while the server was down")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 4):
            tracker.log_metrics({"dev_metric": 0.1 * step}, step=step)
        tracker.log_params({"loss.beta": 2.0})
        tracker.log_artifact(artifact)
        tracker.log_figure(plot_dev_curves({"a": [0.1, 0.2, 0.3]}), "plots/dev.png")
        assert tracker.register_model(tmp_path, "m") is None
    assert tracker.degraded
    fallback = [w for w in caught if issubclass(w.category, TrackingFallbackWarning)]
    assert len(fallback) == 1 and server.url in str(fallback[0].message)

    records = read_fallback(tmp_path / "run" / FALLBACK_FILE)
    assert [r["op"] for r in records] == ["metrics"] * 3 + ["params", "artifact", "figure", "register_model"]
    assert [r["step"] for r in records[:3]] == [1, 2, 3] and "error" in records[0]
    assert all(r["run_id"] == tracker.run_id for r in records)
    assert Path(records[5]["path"]).is_file()

    # the server comes back: after RETRY_AFTER_S a quick probe succeeds and logging resumes there
    server = start_mlflow_server(backend, tmp_path / "server-artifacts", port)
    try:
        monkeypatch.setattr("armada_ray.tracking.tracker.RETRY_AFTER_S", 0.0)
        tracker.log_metrics({"dev_metric": 0.9}, step=9)
        assert not tracker.degraded
        tracker.end()
    finally:
        server.stop()
    assert len(read_fallback(tmp_path / "run" / FALLBACK_FILE)) == len(records)

    run = MlflowClient(tracking_uri=backend).get_run(tracker.run_id)
    assert run.data.params["loss.alpha"] == "0.5" and "loss.beta" not in run.data.params
    history = MlflowClient(tracking_uri=backend).get_metric_history(tracker.run_id, "dev_metric")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.1), (9, 0.9)]
    assert run.info.status == "FINISHED"
