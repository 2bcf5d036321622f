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
import os
import time
from pathlib import Path
from typing import Any

from armada_ray import console
from armada_ray.cache import dataset_view
from armada_ray.config import ArmadaConfig, ConfigError, save_config
from armada_ray.evaluate import evaluate_on_cluster
from armada_ray.export import export_on_cluster
from armada_ray.fingerprint import TeacherIdentity
from armada_ray.plan import check_plan, trial_config
from armada_ray.probe import try_probe
from armada_ray.ray_utils import ensure_ray
from armada_ray.report import mean_ci95, paired
from armada_ray.resources import cluster_view
from armada_ray.tasks import task_spec
from armada_ray.tracking import standard_tags, start_sweep_parent
from armada_ray.train import checkpoint as ckpt
from armada_ray.train.env import worker_env
from armada_ray.train.trainer import build_trainer, summarize_result, teacher_identity

SWEEP_FILE = "sweep.json"  # marks a sweep's folder; keeps its parent MLflow run id for a resume
DRIVER_RESOURCES = {"cpu": 0.01}  # {"cpu": 0} is refused by Tune (NOTES.md)


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


def _trial_driver(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str | None,
                  sweep_dir: str, teacher: dict[str, Any] | None = None) -> None:
    """One Tune trial: build and fit the trial's TorchTrainer (runs inside a Tune trial actor).

    ``teacher``: the sweep driver's teacher identity (JSON), handed on to the trial's workers; only a trial whose
    search-space values change the teacher itself resolves its own (``cache.resolve_teacher_identity``).

    The scheduler may stop this actor as soon as the last epoch is reported (ASHA at ``max_t``), so nothing
    after ``fit()`` is relied on: the trial's facts are written before, and its checkpoints speak for it.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    # the trial's run folder nests under the sweep's: runs/<experiment>/<sweep>/trial-<id>
    cfg = trial_config(base, params, run_name=f"{Path(sweep_dir).name}/trial-{trial_id}")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir)
    (cfg.run_dir / "trial.json").write_text(json.dumps({"trial_id": trial_id, "params": params,
                                                         "run_name": cfg.run_name,
                                                         "checkpoint_storage": ckpt.run_storage(cfg)}))
    trainer = build_trainer(cfg, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
                            name=f"trial-{trial_id}", teacher=_identity(teacher))
    trainer.fit()


def _identity(teacher: dict[str, Any] | None) -> TeacherIdentity | None:
    return TeacherIdentity.from_json(teacher) if teacher else None


def _console_callbacks() -> list[Any]:
    """Tune's per-trial result/completion lines only with --verbose: every trial prints its own epoch lines.

    Without it, Tune's default ``TrialProgressCallback`` prints "Trial ... completed. Last result: ..." at every
    verbosity for trials that report nothing (the comparison's runs); passing a subclass replaces the default.
    Errors are still printed."""
    if console.verbose():
        return []
    from ray.tune.progress_reporter import TrialProgressCallback

    class QuietTrialProgress(TrialProgressCallback):
        def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
            pass

        def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
            pass

    return [QuietTrialProgress()]


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


def sweep_dir_of(cfg: ArmadaConfig) -> Path:
    """The folder of the sweep ``cfg.run_name``: Tune's experiment state, the trials' run folders, the results."""
    return cfg.work_dir / "runs" / cfg.experiment / (cfg.run_name or "sweep")


def _fit_or_restore(resume: bool, path: Path, trainable: Any, new_tuner: Any) -> Any:
    """``tuner.fit()`` of a new Tuner, or of the one saved at ``path`` when resuming (a killed driver): Tune
    reruns no finished trial, and an interrupted one restarts its Ray Train run, which continues from its last
    registered checkpoint (same run name and storage) in the same MLflow run (the checkpoint carries its id)."""
    from ray import tune

    if resume and tune.Tuner.can_restore(str(path)):
        print(f"[armada] resuming {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True).fit()
    return new_tuner().fit()


def run_sweep(cfg: ArmadaConfig, parent_run_id: str | None, teacher: TeacherIdentity | None = None
              ) -> tuple[Any, Path]:
    """Run (or resume with ``resume=true``) the Tune sweep; returns (ResultGrid, sweep folder). ``teacher``: the
    teacher identity the driver resolved, for every trial."""
    from ray import tune

    sweep_dir = sweep_dir_of(cfg)
    sweep_name, storage = sweep_dir.name, sweep_dir.parent
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base = cfg.model_dump(mode="json")
    base.update(run_name=None, resume=False)
    base["tracking"]["experiment"] = cfg.experiment
    trainable = tune.with_resources(
        tune.with_parameters(_trial_driver, base=base, parent_run_id=parent_run_id, sweep_dir=str(sweep_dir),
                             teacher=teacher.to_json() if teacher is not None else None),
        DRIVER_RESOURCES,
    )
    def new_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space=build_param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric, mode=cfg.tune.mode, num_samples=cfg.tune.num_samples,
                max_concurrent_trials=cfg.tune.max_concurrent_trials, scheduler=_scheduler(cfg),
                search_alg=_searcher(cfg),
            ),
            # trial tables only with --verbose: every trial prints its own epoch lines
            run_config=tune.RunConfig(name=sweep_name, storage_path=str(storage), verbose=console.tune_verbosity(),
                                      callbacks=_console_callbacks()),
        )
    return _fit_or_restore(cfg.resume, sweep_dir, trainable, new_tuner), sweep_dir


def collect_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every trial of a sweep with its params and best checkpoint, read from the trials' own folders."""
    trials = []
    for info in sorted(sweep_dir.glob("trial-*/trial.json")):
        trial = json.loads(info.read_text())
        ckpts = ckpt.list_checkpoints(trial.get("checkpoint_storage") or str(info.parent / "ray"))
        trial["epochs"] = max((c.epoch for c in ckpts), default=0)
        best = ckpt.best_of(ckpts)
        trial["best_dev_metric"] = best.dev_metric if best else None
        trial["best_checkpoint"] = best.location if best else None
        for key in ("aligner_dev_metric", "probe_dev_metric"):  # the teacher side beside the student
            trial[key] = best.metrics.get(key) if best else None
        state = (ckpt.read_json(ckpts[-1].location, "state.json") if ckpts else None) or {}
        trial["mlflow_run_id"] = state.get("mlflow_run_id")
        trial["dev_curve"] = [h.get("dev_metric") for h in state.get("history", [])]
        trials.append(trial)
    return trials


def best_trial(finished: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The trial with the best ``best_dev_metric`` under ``tune.mode`` (the sweep's and the baseline sweep's)."""
    sign = 1 if mode == "max" else -1
    return max(finished, key=lambda t: sign * t["best_dev_metric"])


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
    run_name = f"{cfg.run_name}/baseline"
    bcfg = cfg.model_copy(update={"run_name": run_name, "resume": False,
                                  "loss": cfg.loss.model_copy(update={"mode": "baseline"})})
    print(f"[armada] training the undistilled baseline ({run_name})", flush=True)
    t0 = time.perf_counter()
    result = build_trainer(bcfg, parent_run_id=parent_run_id, name="baseline").fit()
    if result.error:
        raise RuntimeError(f"baseline training failed: {result.error}")
    return summarize_result(bcfg, time.perf_counter() - t0)


# Search-space paths that only a distilled run reads; any other path (train.lr, train.epochs, student.*) is
# shared with the undistilled baseline, which then gets a sweep of its own over them with the same budget.
ARMADA_ONLY_PREFIXES = ("loss.", "aligner.", "teacher.")


def shared_search_space(cfg: ArmadaConfig) -> dict[str, Any]:
    """The part of ``tune.search_space`` that the undistilled baseline shares with the ARMADA trials."""
    return {k: v for k, v in cfg.tune.search_space.items() if not k.startswith(ARMADA_ONLY_PREFIXES)}


def run_baseline_sweep(cfg: ArmadaConfig, parent_run_id: str | None) -> dict[str, Any]:
    """The baseline's own sweep over the shared search space (same num_samples): its best params on dev."""
    bcfg = cfg.model_copy(update={
        "run_name": f"{cfg.run_name}-baseline",
        "loss": cfg.loss.model_copy(update={"mode": "baseline"}),
        "tune": cfg.tune.model_copy(update={"search_space": shared_search_space(cfg)})})
    print(f"[armada] the baseline gets the trials' budget over what they share: a sweep of "
          f"{cfg.tune.num_samples} over {', '.join(bcfg.tune.search_space)}", flush=True)
    _, bdir = run_sweep(bcfg, parent_run_id)
    finished = [t for t in collect_trials(bdir) if t.get("best_dev_metric") is not None]
    if not finished:
        raise RuntimeError(f"no baseline trial finished ({bdir})")
    return best_trial(finished, cfg.tune.mode)


def _run_driver(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str | None,
                teacher: dict[str, Any] | None = None) -> None:
    """One run of the seeded comparison as a Tune trial: a full Ray Train run scored on test at its best dev
    epoch, its facts in the run's summary.json (read back by :func:`run_comparison`)."""
    run = params["run"]
    cfg = trial_config(base, {**run["params"], "train.seed": run["seed"]}, run_name=run["name"])
    print(f"[armada] comparison: {run['arm']} at seed {run['seed']} ({run['name']})", flush=True)
    t0 = time.perf_counter()
    result = build_trainer(cfg, parent_run_id=parent_run_id, name=run["name"].split("/")[-1],
                           eval_test=True, teacher=_identity(teacher)).fit()
    if result.error:
        raise RuntimeError(f"{run['name']}: {result.error}")
    summarize_result(cfg, time.perf_counter() - t0)


def run_comparison(cfg: ArmadaConfig, best: dict[str, Any], baseline_params: dict[str, Any],
                   parent_run_id: str | None, teacher: TeacherIdentity | None = None) -> dict[str, Any]:
    """Best ARMADA config vs the undistilled baseline over ``tune.seeds`` (issue 12: not one run against the best
    of N). Each arm is trained once per seed with the same budget, selected on dev and scored on test at its best
    dev epoch; the sweep's own best trial stands for its seed. Returns both arms' runs, mean ± 95 % interval and
    the paired difference (points) with its interval and t-test.

    The runs are one Tune grid (FIFO, ``tune.max_concurrent_trials`` at once), so they share the cluster like
    the sweep's trials instead of queueing one by one behind the driver; a run that fails is recorded and the
    comparison goes on with the seeds it has."""
    from ray import tune

    base = cfg.model_dump(mode="json")
    base.update(run_name=None, resume=False)
    base["tracking"]["experiment"] = cfg.experiment
    arms = {"armada": dict(best["params"]), "baseline": {**baseline_params, "loss.mode": "baseline"}}
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    todo: list[dict[str, Any]] = []
    for seed in cfg.tune.seeds:
        for arm, params in arms.items():
            name = f"{cfg.run_name}/seed{seed}-{arm}"
            if arm == "armada" and seed == cfg.train.seed and best.get("best_checkpoint"):
                rcfg = trial_config(base, {**params, "train.seed": seed}, run_name=name)
                res = evaluate_on_cluster(rcfg, best["best_checkpoint"], "test")
                runs[arm].append({"seed": seed, "dev": best["best_dev_metric"], "test": res["metric_value"],
                                  "run_name": best["run_name"], "checkpoint": best["best_checkpoint"]})
            else:
                todo.append({"name": name, "arm": arm, "seed": seed, "params": params})
    if todo:
        print(f"[armada] comparison: {len(todo)} run(s), up to {cfg.tune.max_concurrent_trials} at once", flush=True)
        trainable = tune.with_resources(
            tune.with_parameters(_run_driver, base=base, parent_run_id=parent_run_id,
                                 teacher=teacher.to_json() if teacher is not None else None), DRIVER_RESOURCES)
        name = f"{Path(cfg.run_name or 'sweep').name}-comparison"
        storage = cfg.work_dir / "runs" / cfg.experiment
        _fit_or_restore(cfg.resume, storage / name, trainable, lambda: tune.Tuner(
            trainable, param_space={"run": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      verbose=console.tune_verbosity(), callbacks=_console_callbacks()),
        ))
    for run in todo:
        summary = cfg.work_dir / "runs" / cfg.experiment / run["name"] / "summary.json"
        if not summary.exists():  # the run failed: its error is in the Tune trial's log
            runs[run["arm"]].append({"seed": run["seed"], "error": f"{run['name']} did not finish (no {summary})"})
            continue
        s = json.loads(summary.read_text())
        runs[run["arm"]].append({"seed": run["seed"], "dev": s["best_dev_metric"], "test": s["test_at_best_dev"],
                                 "run_name": run["name"], "checkpoint": s["best_checkpoint"], "wall_s": s["wall_s"]})
    for arm in runs:
        runs[arm].sort(key=lambda r: cfg.tune.seeds.index(r["seed"]))  # pairs line up by seed
    out: dict[str, Any] = {"seeds": list(cfg.tune.seeds), "armada_params": arms["armada"],
                           "baseline_params": baseline_params, "arms": {}}
    for arm, rs in runs.items():
        test_mean, test_half = mean_ci95([r["test"] for r in rs if r.get("test") is not None])
        dev_mean, _ = mean_ci95([r["dev"] for r in rs if r.get("dev") is not None])
        out["arms"][arm] = {"runs": rs, "test_mean": test_mean, "test_ci95": test_half, "dev_mean": dev_mean}
    out["paired"] = paired([r.get("test") for r in runs["armada"]], [r.get("test") for r in runs["baseline"]])
    return out


def comparison_lines(comp: dict[str, Any], metric: str) -> list[str]:
    """The comparison as a few console lines (also the demo's summary)."""
    def num(v: Any, fmt: str = ".4f") -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "n/a"

    lines = [f"{'run (seeds ' + ', '.join(map(str, comp['seeds'])) + ')':<38}{'dev ' + metric:>12}"
             f"{'test ' + metric + ' (mean ± 95 %)':>28}"]
    for arm, label in (("baseline", "undistilled baseline"), ("armada", "ARMADA (best trial's config)")):
        a = comp["arms"][arm]
        lines.append(f"{label:<38}{num(a['dev_mean']):>12}{num(a['test_mean']) + ' ± ' + num(a['test_ci95']):>28}")
    p = comp["paired"]
    lines.append(f"paired difference ARMADA − baseline on test: {num(p['gain_points'], '+.1f')} points "
                 f"[95 % {num(p['gain_ci95_low'], '+.1f')}, {num(p['gain_ci95_high'], '+.1f')}], "
                 f"p = {num(p['p_value'], '.3f')} over {p['pairs']} seed(s)")
    return lines


def sweep_markdown(cfg: ArmadaConfig, trials: list[dict[str, Any]], best: dict[str, Any],
                   baseline: dict[str, Any] | None, comparison: dict[str, Any] | None,
                   probe: dict[str, Any] | None, metric: str) -> str:
    """The sweep parent's MLflow description: every trial and the baseline with their metrics, the teacher's
    ceiling, and the seeded comparison (issue 16: the comparison a user came for, at a glance)."""
    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) and v == v else "—"

    t = cfg.teacher
    lines = [f"**Sweep {cfg.run_name}** — task `{cfg.task.name}`, student `{cfg.student.model}`, teacher "
             f"`{t.kind}:{t.model}`" + (" (**stand-in** teacher)" if t.stand_in else "") +
             f". Trials are selected on dev {metric}.", ""]
    if probe:
        lines += [f"Teacher ceiling: a linear probe on the cached teacher vectors scores dev {metric} "
                  f"{num(probe.get('probe_dev_metric'))} (majority-class floor {num(probe.get('floor_dev_metric'))}).",
                  ""]
    params = list(cfg.tune.search_space)
    lines += ["| run | " + " | ".join(params) + f" | best dev {metric} | aligner dev |",
              "|---" * (len(params) + 3) + "|"]
    for tr in sorted(trials, key=lambda x: -(x.get("best_dev_metric") or -1e9)):
        name = tr["run_name"].split("/")[-1] + (" **(best)**" if tr is best else "")
        values = [str(tr["params"].get(p, "—")) if not isinstance(tr["params"].get(p), float)
                  else f"{tr['params'][p]:.3g}" for p in params]
        lines.append(f"| {name} | " + " | ".join(values) + f" | {num(tr.get('best_dev_metric'))} | "
                     f"{num(tr.get('aligner_dev_metric'))} |")
    if baseline:
        lines.append("| undistilled baseline | " + " | ".join("—" for _ in params) +
                     f" | {num(baseline.get('best_dev_metric'))} | — |")
    if comparison:
        lines += ["", "**Seeded comparison** (test, at each run's best dev epoch):", "", "```",
                  *comparison_lines(comparison, metric), "```"]
    return "\n".join(lines)


def _log_sweep_overview(parent: Any, cfg: ArmadaConfig, trials: list[dict[str, Any]], best: dict[str, Any],
                        baseline: dict[str, Any] | None, comparison: dict[str, Any] | None, metric: str) -> None:
    """The parent run's description and one chart of every child's per-epoch dev metric."""
    from armada_ray import plots  # lazy: matplotlib only when a sweep has finished
    probe = try_probe(cfg)[0] if cfg.loss.mode == "armada" else None
    parent.set_description(sweep_markdown(cfg, trials, best, baseline, comparison, probe, metric))
    curves = {t["run_name"].split("/")[-1]: [v for v in t.get("dev_curve", []) if v is not None] for t in trials}
    if baseline and baseline.get("dev_curve"):
        curves["baseline"] = baseline["dev_curve"]
    try:
        parent.log_figure(plots.plot_dev_curves(curves, f"dev {metric}"), "plots/sweep_dev_curves.png")
    except Exception as exc:  # noqa: BLE001 - a plot never fails a sweep
        print(f"[armada] warning: could not plot the sweep's dev curves ({exc})", flush=True)


def resolve_sweep_name(cfg: ArmadaConfig) -> ArmadaConfig:
    """The sweep's name: given, the latest sweep of the experiment when resuming, or a new timestamped one."""
    if cfg.run_name:
        return cfg
    if cfg.resume:  # the baseline's and the comparison's Tune folders carry no SWEEP_FILE
        sweeps = sorted((cfg.work_dir / "runs" / cfg.experiment).glob(f"*/{SWEEP_FILE}"),
                        key=lambda p: p.stat().st_mtime)
        if not sweeps:
            raise ConfigError(f"config error: resume=true but no earlier sweep under "
                              f"{cfg.work_dir / 'runs' / cfg.experiment}; set run_name=<sweep>")
        return cfg.model_copy(update={"run_name": sweeps[-1].parent.name})
    return cfg.model_copy(update={"run_name": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"})


def open_sweep_parent(cfg: ArmadaConfig, tags: dict[str, str]) -> Any:
    """The sweep's parent MLflow run (``armada.kind=sweep``), its id kept in the sweep folder's ``SWEEP_FILE``
    so that a sweep resumed after its driver was killed reattaches to it: the trials, which reattach by name
    under their parent, then never open a second run."""
    sweep_dir = sweep_dir_of(cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    marker = sweep_dir / SWEEP_FILE
    known = json.loads(marker.read_text()).get("mlflow_parent_run_id") if cfg.resume and marker.exists() else None
    parent = start_sweep_parent(cfg, sweep_dir.name, run_id=known, tags=tags)
    marker.write_text(json.dumps({"run_name": cfg.run_name, "mlflow_parent_run_id": parent.run_id}))
    return parent


def run_tune(cfg: ArmadaConfig, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """``armada tune``: check, open the parent MLflow run, sweep, report and export the best trial.

    ``plan``: the facts of a plan already checked on this driver (the CLI's preflight of a submitted job), so
    the checks (the sweep's among them) do not run twice."""
    from armada_ray import plots  # lazy: matplotlib only when a sweep has finished

    cfg = resolve_sweep_name(cfg)
    spec = task_spec(cfg.task)
    if plan is None:
        check_plan(cfg, cluster_view(cfg), command="tune")
    teacher = teacher_identity(cfg)  # resolved once here; every trial's workers open the cache by it
    t0 = time.perf_counter()
    parent = open_sweep_parent(cfg, standard_tags(cfg, teacher.fingerprint_id if teacher is not None else None))
    if teacher is not None:
        parent.log_cache_dataset(dataset_view(teacher.cache_path))
    for k, v in worker_env(cfg).items():
        os.environ.setdefault(k, v)
    ensure_ray(runtime_env={"env_vars": worker_env(cfg)})
    try:
        grid, sweep_dir = run_sweep(cfg, parent.run_id if cfg.tracking.enabled else None, teacher=teacher)
    except Exception:
        parent.end("FAILED")
        raise
    trials = collect_trials(sweep_dir)
    errors = [str(r.error) for r in grid if r.error]
    finished = [t for t in trials if t.get("best_dev_metric") is not None]
    if not finished:
        parent.end("FAILED")
        raise RuntimeError(f"no trial finished; errors: {errors[:2]}")
    best = best_trial(finished, cfg.tune.mode)
    params = list(cfg.tune.search_space)
    parent.log_metrics({"best_dev_metric": best["best_dev_metric"], "trials": len(trials),
                        "trials_errored": len(errors)}, step=0)
    try:
        fig = plots.plot_parallel_coordinates([{**t["params"], "dev_metric": t["best_dev_metric"]} for t in finished],
                                              params, "dev_metric")
        parent.log_figure(fig, "plots/sweep_parallel_coordinates.png")
    except Exception as exc:  # noqa: BLE001
        print(f"[armada] warning: could not plot the sweep ({exc})")
    parent_id = parent.run_id if cfg.tracking.enabled else None
    baseline, baseline_params, comparison = None, {}, None
    if cfg.tune.include_baseline and shared_search_space(cfg):
        bbest = run_baseline_sweep(cfg, parent_id)
        baseline_params = bbest["params"]
        baseline = {"best_dev_metric": bbest["best_dev_metric"], "best_checkpoint": bbest["best_checkpoint"]}
    if cfg.tune.include_baseline and cfg.tune.seeds:
        comparison = run_comparison(cfg, best, baseline_params, parent_id, teacher=teacher)
        seeded = [r for r in comparison["arms"]["baseline"]["runs"] if r.get("seed") == cfg.train.seed
                  and "error" not in r] or [r for r in comparison["arms"]["baseline"]["runs"] if "error" not in r]
        if baseline is None and seeded:
            baseline = {"best_dev_metric": seeded[0]["dev"], "best_checkpoint": seeded[0]["checkpoint"]}
        metric = spec.metric
        for line in comparison_lines(comparison, metric):
            print(f"[armada] {line}", flush=True)
        p = comparison["paired"]
        parent.log_metrics({k: float(v) for k, v in (
            ("comparison_armada_test_mean", comparison["arms"]["armada"]["test_mean"]),
            ("comparison_baseline_test_mean", comparison["arms"]["baseline"]["test_mean"]),
            ("comparison_gain_points", p["gain_points"]), ("comparison_gain_ci95_low", p["gain_ci95_low"]))
            if isinstance(v, (int, float)) and v == v}, step=0)
        (sweep_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str))
        parent.log_artifact(str(sweep_dir / "comparison.json"))
    elif cfg.tune.include_baseline and baseline is None:
        baseline = run_baseline(cfg, parent_id)
    if baseline is not None and "dev_curve" not in baseline:
        history = baseline.get("history") or []
        if not history and baseline.get("best_checkpoint"):
            history = (ckpt.read_json(baseline["best_checkpoint"], "state.json") or {}).get("history", [])
        baseline["dev_curve"] = [h.get("dev_metric") for h in history if h.get("dev_metric") is not None]
    _log_sweep_overview(parent, cfg, trials, best, baseline, comparison, spec.metric)
    _close_child_runs(cfg, trials)
    (sweep_dir / "best_trial.json").write_text(json.dumps(best, indent=2, default=str))
    parent.log_artifact(str(sweep_dir / "best_trial.json"))
    export_dir = cfg.export.dir or (cfg.work_dir / "exports" / cfg.experiment / cfg.run_name)
    exported = export_on_cluster(cfg, best["best_checkpoint"], Path(export_dir))
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
        "baseline_params": baseline_params,
        "comparison": comparison,
        "mlflow_parent_run_id": parent.run_id,
        "mlflow_url": parent.url,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    parent.end("FINISHED")
    print(f"[armada] sweep: {len(trials)} trials, best {best['run_name']} dev {best['best_dev_metric']:.4f} "
          f"with {best['params']}", flush=True)
    return result
