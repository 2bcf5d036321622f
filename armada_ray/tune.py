"""``armada tune``: a Ray Tune sweep where every trial is a full Ray Train run.

Train V2 pattern (Ray's "Hyperparameter Tuning with Ray Tune" guide): a per-trial driver function builds
a ``TorchTrainer`` named after the trial and reports back through ``TuneReportCallback``; ``Tuner(trainer)``
is deprecated. The search space is a set of dotted config paths, so a trial is just overrides on the same
config. Tune does not count Train workers against its resources (NOTES.md), so the driver asks for a
sliver of CPU and ``tune.max_concurrent_trials`` bounds how many trials' workers run at once.

MLflow: the sweep is a parent run opened here; every trial's rank-0 worker opens a nested child run and
keeps its id in its checkpoints, so a restarted trial logs into the same run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError, apply_overrides, build_config, save_config

# Metrics the training loop reports every epoch (plus dev_<name> for each of the task's metrics).
REPORTED_METRICS = {"dev_metric", "best_dev_metric", "train_loss", "first_step_loss", "samples_per_s", "epoch",
                    "epoch_s", "aligner_loss", "aligner_dev_metric", "loss_task", "loss_soft", "loss_manifold"}
DRIVER_RESOURCES = {"cpu": 0.01}  # {"cpu": 0} is refused by Tune (NOTES.md)


def _override_str(path: str, value: Any) -> str:
    return f"{path}={json.dumps(value)}"


def trial_config(base: dict[str, Any], params: dict[str, Any], run_name: str) -> ArmadaConfig:
    """The config of one trial: the base config plus the trial's overrides."""
    overrides = [_override_str(k, v) for k, v in params.items()] + [f"run_name={run_name}"]
    return build_config(apply_overrides(base, overrides))


def build_param_space(cfg: ArmadaConfig) -> dict[str, Any]:
    """Tune domains from ``tune.search_space`` (dotted config paths)."""
    from ray import tune

    space: dict[str, Any] = {}
    for path, dom in cfg.tune.search_space.items():
        if dom.type == "choice":
            space[path] = tune.choice(dom.values)
        elif dom.type == "grid":
            space[path] = tune.grid_search(dom.values)
        elif dom.type == "uniform":
            space[path] = tune.uniform(dom.low, dom.high)
        elif dom.type == "loguniform":
            space[path] = tune.loguniform(dom.low, dom.high)
        else:
            space[path] = tune.randint(int(dom.low), int(dom.high))
    return space


def check_sweep(cfg: ArmadaConfig, metric_names: list[str]) -> None:
    """Refuse a sweep that cannot work, before any trial starts."""
    problems: list[str] = []
    if not cfg.tune.search_space:
        problems.append("config error: tune.search_space is empty; add dotted paths, e.g. "
                        "tune.search_space={loss.alpha: {type: uniform, low: 0.1, high: 0.9}}")
    known = REPORTED_METRICS | {f"dev_{m}" for m in metric_names}
    if cfg.tune.metric not in known:
        problems.append(f"config error: tune.metric={cfg.tune.metric!r} is not reported by training; "
                        f"allowed: {', '.join(sorted(known))}")
    if cfg.tune.searcher == "optuna" and any(d.type == "grid" for d in cfg.tune.search_space.values()):
        problems.append("config error: tune.searcher='optuna' cannot sample type=grid; use choice")
    base = cfg.model_dump(mode="json")
    for path, dom in cfg.tune.search_space.items():
        # every value a trial can get (issue 13: only the first was checked, so alpha: [1, 2] started a sweep)
        if dom.values:
            samples = list(dom.values)
        else:
            samples = [int(dom.low), int(dom.high) - 1] if dom.type == "randint" else [dom.low, dom.high]
        for sample in samples:
            try:
                trial_config(base, {path: sample}, "check")
            except ConfigError as exc:
                problems += [f"tune.search_space[{path!r}] value {sample!r}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)


def _trial_driver(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str | None,
                  sweep_dir: str) -> None:
    """One Tune trial: build and fit the trial's TorchTrainer (runs inside a Tune trial actor).

    The scheduler may stop this actor as soon as the last epoch is reported (ASHA at ``max_t``), so nothing
    after ``fit()`` is relied on: the trial's facts are written before, and its checkpoints speak for it.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from armada_ray.train.trainer import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    # the trial's run folder nests under the sweep's: runs/<experiment>/<sweep>/trial-<id>
    cfg = trial_config(base, params, run_name=f"{Path(sweep_dir).name}/trial-{trial_id}")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir)
    (cfg.run_dir / "trial.json").write_text(json.dumps({"trial_id": trial_id, "params": params,
                                                         "run_name": cfg.run_name}))
    trainer = build_trainer(cfg, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
                            name=f"trial-{trial_id}")
    trainer.fit()


def _scheduler(cfg: ArmadaConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                         grace_period=min(cfg.tune.grace_period, cfg.train.epochs), reduction_factor=2)


def _searcher(cfg: ArmadaConfig) -> Any:
    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.train.seed)
    return None


def run_sweep(cfg: ArmadaConfig, parent_run_id: str | None) -> tuple[Any, Path]:
    """Run (or resume with ``resume=true``) the Tune sweep; returns (ResultGrid, sweep folder)."""
    from ray import tune

    sweep_name = cfg.run_name or "sweep"
    storage = cfg.work_dir / "runs" / cfg.experiment
    sweep_dir = storage / sweep_name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.model_dump(mode="json")
    base.update(run_name=None, resume=False)
    base["tracking"]["experiment"] = cfg.experiment
    base["paths"]["work_dir"] = str(cfg.work_dir)  # absolute: trial actors may run in another cwd
    trainable = tune.with_resources(
        tune.with_parameters(_trial_driver, base=base, parent_run_id=parent_run_id, sweep_dir=str(sweep_dir)),
        DRIVER_RESOURCES,
    )
    if cfg.resume and tune.Tuner.can_restore(str(sweep_dir)):
        print(f"[armada] resuming sweep {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=build_param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric, mode=cfg.tune.mode, num_samples=cfg.tune.num_samples,
                max_concurrent_trials=cfg.tune.max_concurrent_trials, scheduler=_scheduler(cfg),
                search_alg=_searcher(cfg),
            ),
            run_config=tune.RunConfig(name=sweep_name, storage_path=str(storage), verbose=1),
        )
    return tuner.fit(), sweep_dir


def collect_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every trial of a sweep with its params and best checkpoint, read from the trials' own folders."""
    from armada_ray.train.trainer import checkpoints_on_disk

    trials = []
    for info in sorted(sweep_dir.glob("trial-*/trial.json")):
        trial = json.loads(info.read_text())
        ckpts = checkpoints_on_disk(info.parent)
        trial["epochs"] = max((m.get("epoch", 0) for _, m in ckpts), default=0)
        scored = [(p, m) for p, m in ckpts if m.get("dev_metric") is not None]
        best = max(scored, key=lambda pm: pm[1]["dev_metric"], default=None)
        trial["best_dev_metric"] = best[1]["dev_metric"] if best else None
        trial["best_checkpoint"] = str(best[0]) if best else None
        for key in ("aligner_dev_metric", "probe_dev_metric"):  # the teacher side beside the student
            trial[key] = best[1].get(key) if best else None
        latest = ckpts[-1][0] / "state.json" if ckpts else None
        trial["mlflow_run_id"] = json.loads(latest.read_text()).get("mlflow_run_id") if latest and latest.exists() \
            else None
        trials.append(trial)
    return trials


def _close_child_runs(cfg: ArmadaConfig, trials: list[dict[str, Any]]) -> None:
    """A trial the scheduler stopped may leave its child run RUNNING: mark it finished (or killed early)."""
    if not cfg.tracking.enabled:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(cfg.tracking_uri)
        for t in trials:
            if t.get("mlflow_run_id") and client.get_run(t["mlflow_run_id"]).info.status == "RUNNING":
                early = t["epochs"] < cfg.train.epochs
                client.set_terminated(t["mlflow_run_id"], "KILLED" if early else "FINISHED")
    except Exception as exc:  # noqa: BLE001 - bookkeeping only
        print(f"[armada] warning: could not close trial runs ({exc})", flush=True)


def run_baseline(cfg: ArmadaConfig, parent_run_id: str | None) -> dict[str, Any]:
    """The undistilled baseline (``loss.mode=baseline``) as one more child run of the sweep."""
    from armada_ray.train.trainer import build_trainer, summarize_result

    run_name = f"{cfg.run_name}/baseline"
    bcfg = cfg.model_copy(update={"run_name": run_name, "resume": False,
                                  "loss": cfg.loss.model_copy(update={"mode": "baseline"})})
    print(f"[armada] training the undistilled baseline ({run_name})", flush=True)
    t0 = time.perf_counter()
    result = build_trainer(bcfg, parent_run_id=parent_run_id, name="baseline").fit()
    if result.error:
        raise RuntimeError(f"baseline training failed: {result.error}")
    return summarize_result(bcfg, result, time.perf_counter() - t0)


def resolve_sweep_name(cfg: ArmadaConfig) -> ArmadaConfig:
    """The sweep's name: given, the latest sweep of the experiment when resuming, or a new timestamped one."""
    if cfg.run_name:
        return cfg
    if cfg.resume:
        sweeps = sorted((cfg.work_dir / "runs" / cfg.experiment).glob("*/tuner.pkl"), key=lambda p: p.stat().st_mtime)
        if not sweeps:
            raise ConfigError(f"config error: resume=true but no earlier sweep under "
                              f"{cfg.work_dir / 'runs' / cfg.experiment}; set run_name=<sweep>")
        return cfg.model_copy(update={"run_name": sweeps[-1].parent.name})
    return cfg.model_copy(update={"run_name": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"})


def run_tune(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada tune``: check, open the parent MLflow run, sweep, report and export the best trial."""
    from armada_ray import plots
    from armada_ray.preflight import preflight_if_submitted
    from armada_ray.ray_utils import ensure_ray
    from armada_ray.tasks import get_task
    from armada_ray.tracking import RunTracker, standard_tags
    from armada_ray.train.trainer import _worker_env, check_plan, teacher_fingerprint_id

    preflight_if_submitted(cfg, "tune")  # a `ray job submit` entrypoint checks its plan before any work
    cfg = resolve_sweep_name(cfg)
    spec = get_task(cfg.task.name)
    check_sweep(cfg, [spec.metric, *getattr(spec, "extra_metrics", [])])
    check_plan(cfg)
    t0 = time.perf_counter()
    parent = (RunTracker.start(cfg, run_name=cfg.run_name, kind="tune",
                               tags=standard_tags(cfg, teacher_fingerprint_id(cfg)))
              if cfg.tracking.enabled else RunTracker.disabled(cfg))
    parent.log_config(cfg)
    from armada_ray.cache import MANIFEST, open_cache_for

    cache = open_cache_for(cfg) if cfg.loss.mode == "armada" else None
    if cache is not None:
        parent.log_cache_dataset(cache.path / MANIFEST, name=f"teacher-cache-{cache.fingerprint_id}")
    import os

    for k, v in _worker_env(cfg).items():
        os.environ.setdefault(k, v)
    ensure_ray(runtime_env={"env_vars": _worker_env(cfg)})
    try:
        grid, sweep_dir = run_sweep(cfg, parent.run_id if cfg.tracking.enabled else None)
    except Exception:
        parent.end("FAILED")
        raise
    trials = collect_trials(sweep_dir)
    errors = [str(r.error) for r in grid if r.error]
    finished = [t for t in trials if t.get("best_dev_metric") is not None]
    if not finished:
        parent.end("FAILED")
        raise RuntimeError(f"no trial finished; errors: {errors[:2]}")
    sign = 1 if cfg.tune.mode == "max" else -1
    best = max(finished, key=lambda t: sign * t["best_dev_metric"])
    params = list(cfg.tune.search_space)
    parent.log_metrics({"best_dev_metric": best["best_dev_metric"], "trials": len(trials),
                        "trials_errored": len(errors)}, step=0)
    try:
        fig = plots.plot_parallel_coordinates([{**t["params"], "dev_metric": t["best_dev_metric"]} for t in finished],
                                              params, "dev_metric")
        parent.log_figure(fig, "plots/sweep_parallel_coordinates.png")
    except Exception as exc:  # noqa: BLE001
        print(f"[armada] warning: could not plot the sweep ({exc})")
    baseline = run_baseline(cfg, parent.run_id if cfg.tracking.enabled else None) if cfg.tune.include_baseline \
        else None
    _close_child_runs(cfg, trials)
    (sweep_dir / "best_trial.json").write_text(json.dumps(best, indent=2, default=str))
    parent.log_artifact(str(sweep_dir / "best_trial.json"))
    from armada_ray.export import export_checkpoint

    export_dir = cfg.export.dir or (cfg.work_dir / "exports" / cfg.experiment / cfg.run_name)
    exported = export_checkpoint(Path(best["best_checkpoint"]), Path(export_dir), merge=cfg.export.merge)
    version = None
    if cfg.tracking.enabled and cfg.tracking.register_model:
        model_name = cfg.tracking.registered_model_name or f"{cfg.experiment}-{cfg.task.name}"
        version = parent.register_model(exported["export_dir"], model_name)
        print(f"[armada] registered {model_name} version {version} in the MLflow model registry", flush=True)
    result = {
        "sweep_dir": str(sweep_dir),
        "trials": len(trials),
        "trials_errored": len(errors),
        "best_trial": best["run_name"],
        "best_params": best["params"],
        "best_dev_metric": best["best_dev_metric"],
        "best_aligner_dev_metric": best.get("aligner_dev_metric"),
        "probe_dev_metric": best.get("probe_dev_metric"),
        "best_checkpoint": best["best_checkpoint"],
        "export_dir": exported["export_dir"],
        "registered_model_version": version,
        "baseline_dev_metric": baseline["best_dev_metric"] if baseline else None,
        "baseline_checkpoint": baseline["best_checkpoint"] if baseline else None,
        "mlflow_parent_run_id": parent.run_id,
        "mlflow_url": parent.url,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    parent.end("FINISHED")
    print(f"[armada] sweep: {len(trials)} trials, best {best['run_name']} dev {best['best_dev_metric']:.4f} "
          f"with {best['params']}", flush=True)
    return result
