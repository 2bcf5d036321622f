"""`armada tune`: search-space checks, and a real sweep (Ray Tune + Ray Train + DeepSpeed) whose trials read the
one teacher cache, with the MLflow parent/child structure, plots and registry entry read back via MlflowClient."""

from __future__ import annotations

from pathlib import Path

import pytest
from _paths import JOBS

from armada_ray.config import ConfigError, load_config

SMALL = ["task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=16", "task.max_test=16",
         "student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
         "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=2", "train.report_every=2",
         "scaling.cpus_per_worker=0.9", "tune.num_samples=2", "tune.max_concurrent_trials=2"]


def test_search_space_becomes_tune_domains_and_trials_are_overrides():
    from ray import tune

    from armada_ray.plan import trial_config
    from armada_ray.tune import build_param_space

    cfg = load_config(JOBS / "demo.yaml")
    space = build_param_space(cfg)
    assert set(space) == set(cfg.tune.search_space)
    assert isinstance(space["loss.alpha"], tune.search.sample.Float)
    trial = trial_config(cfg.model_dump(mode="json"), {"loss.alpha": 0.25, "loss.manifold": "euclid"}, "s/trial-1")
    assert trial.loss.alpha == 0.25 and trial.loss.manifold == "euclid" and trial.run_name == "s/trial-1"
    assert trial.student == cfg.student


def test_baseline_shares_the_non_armada_part_of_the_search_space():
    from armada_ray.tune import comparison_lines, shared_search_space

    cfg = load_config(JOBS / "demo.yaml")
    assert shared_search_space(cfg) == {}  # the demo searches loss.* only: one baseline config
    cfg = load_config(JOBS / "demo.yaml", ["tune.search_space={train.lr: {type: choice, values: [0.001, 0.0001]}, "
                                            "loss.beta: {type: choice, values: [1.0]}, "
                                            "aligner.weight_decay: {type: choice, values: [0.0]}}"])
    assert set(shared_search_space(cfg)) == {"train.lr"}
    comp = {"seeds": [1, 2], "arms": {"armada": {"dev_mean": 0.8, "test_mean": 0.9, "test_ci95": 0.05},
                                      "baseline": {"dev_mean": 0.7, "test_mean": 0.8, "test_ci95": float("nan")}},
            "paired": {"gain_points": 10.0, "gain_ci95_low": 2.0, "gain_ci95_high": 18.0, "p_value": 0.04, "pairs": 2}}
    text = "\n".join(comparison_lines(comp, "accuracy"))
    assert "0.9000 ± 0.0500" in text and "0.8000 ± n/a" in text and "+10.0 points [95 % +2.0, +18.0]" in text


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["tune.search_space={}"], "tune.search_space is empty"),
        (["tune.metric=dev_bleu"], "tune.metric='dev_bleu' is not reported by training"),
        (["tune.searcher=optuna", "tune.search_space={loss.beta: {type: grid, values: [1, 2]}}"], "cannot sample"),
        (["tune.search_space={loss.alpah: {type: choice, values: [0.1]}}"], "did you mean loss.alpha"),
        (["tune.search_space={loss.alpha: {type: choice, values: [3.0]}}"], "less than or equal to 1"),
        # every value is checked, not only the first (issue 13)
        (["tune.search_space={loss.alpha: {type: choice, values: [0.5, 2]}}"], r"value 2: .*less than or equal to 1"),
        (["tune.search_space={loss.alpha: {type: uniform, low: 0.5, high: 1.5}}"], r"value 1.5: .*less than or equal"),
    ],
)
def test_bad_sweeps_are_refused_before_any_trial(overrides, needle):
    from armada_ray.plan import check_sweep

    cfg = load_config(JOBS / "demo.yaml", overrides)
    with pytest.raises(ConfigError, match=needle):
        check_sweep(cfg, ["accuracy", "macro_f1"])


def test_tracking_server_down_at_start_is_a_clear_error(tmp_path):
    from armada_ray.tracking import RunTracker, TrackingUnavailable

    cfg = load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        RunTracker.start(cfg, run_name="sweep", kind="sweep")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 2 trials + 3 seeded runs; 18 min on a 2-core machine busy with a study
def test_sweep_reads_one_cache_and_lands_in_mlflow_as_parent_with_children(tmp_path, ray_local):
    from mlflow import MlflowClient

    from armada_ray.embed import run_embed
    from armada_ray.teachers.server import start_server_in_thread
    from armada_ray.tune import run_tune

    cfg = load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", *SMALL, "server.port=0",
                                            "tune.include_baseline=true",
                                            "tune.seeds=[42, 43]"])  # the demo's seeds
    server = start_server_in_thread(cfg.server)
    try:
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"endpoint": server.url})})
        before = server.stats()["rows"]  # the server's own warm-up query
        stats = run_embed(cfg)
        calls_after_embed = server.stats()["rows"]
        # every row queried exactly once (the fail-fast probe sends a real row and its vector is kept)
        assert calls_after_embed - before == stats["rows"] == stats["queried"]
        result = run_tune(cfg)
        # every trial read the one cache: the teacher saw no further query
        assert server.stats()["rows"] == calls_after_embed
    finally:
        server.stop()
    assert result["trials"] == 2 and result["best_dev_metric"] is not None
    # the seeded comparison (tune.seeds=[42, 43], through one Tune grid): both arms on every seed, scored on test
    comp = result["comparison"]
    assert comp["seeds"] == [42, 43]
    for arm in ("armada", "baseline"):
        runs = comp["arms"][arm]["runs"]
        assert [r["seed"] for r in runs] == [42, 43] and all(0.0 <= r["test"] <= 1.0 for r in runs), runs
    assert comp["arms"]["armada"]["runs"][0]["run_name"] == result["best_trial"]  # the sweep's trial stands for 42
    assert comp["paired"]["pairs"] == 2
    assert Path(result["export_dir"], "armada_student.json").exists()

    client = MlflowClient(cfg.tracking_uri)
    parent = client.get_run(result["mlflow_parent_run_id"])
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 5  # 2 trials + the best config at seed 43 + the baseline at seeds 42 and 43
    assert len({c.info.run_name for c in children}) == 5  # no duplicate runs
    assert "comparison_gain_points" in parent.data.metrics
    trial = next(c for c in children if "trial-" in c.info.run_name)
    assert trial.data.tags["armada.teacher_stand_in"] == "true" and "dev_metric" in trial.data.metrics
    assert "loss.alpha" in trial.data.params
    history = client.get_metric_history(trial.info.run_id, "dev_metric")
    assert len(history) >= 1
    artifacts = {a.path for a in client.list_artifacts(trial.info.run_id, "plots")}
    assert {"plots/loss_components.png", "plots/dev_curves.png", "plots/embedding_map.png"} <= artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/sweep_parallel_coordinates.png" in parent_artifacts
    versions = client.search_model_versions(f"name = '{cfg.experiment}-{cfg.task.name}'")
    assert len(versions) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2 one-epoch trials + the baseline's own 2-trial sweep, tiny student: ~3 min here
def test_a_shared_search_path_gives_the_baseline_a_sweep_of_its_own_with_the_same_budget(tmp_path, ray_local):
    """Issue 12 item 4: train.lr is shared by both arms, so the undistilled baseline is not one run at the config's
    lr against the best of N ARMADA trials: it gets its own sweep of tune.num_samples over train.lr, and its best
    config on dev is what the sweep reports as the baseline."""
    from armada_ray.embed import run_embed
    from armada_ray.tune import run_tune

    cfg = load_config(JOBS / "demo.yaml", [
        f"paths.work_dir={tmp_path}", *SMALL, "train.epochs=1", "tune.scheduler=fifo", "tune.seeds=[]",
        "teacher={kind: hf, model: minilm, stand_in: true}", "tracking.register_model=false",
        "tune.search_space={train.lr: {type: grid, values: [0.0001, 0.003]}, loss.alpha: {type: choice, values: [0.5]}}",
        "tune.num_samples=1", "tune.include_baseline=true"])
    run_embed(cfg)
    result = run_tune(cfg)
    assert result["trials"] == 2  # the grid's 2 lr values x num_samples 1
    assert set(result["baseline_params"]) == {"train.lr"}  # only the shared path, not loss.alpha
    assert result["baseline_params"]["train.lr"] in (0.0001, 0.003)
    baseline_trials = sorted(Path(result["sweep_dir"]).parent.glob(f"{Path(result['sweep_dir']).name}-baseline/trial-*"))
    assert len(baseline_trials) == 2  # the same budget: a trial per lr value
    assert result["baseline_dev_metric"] is not None and result["baseline_checkpoint"]
