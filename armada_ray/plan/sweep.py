"""A sweep's own plan: the config of one trial, and the refusal of a search space or metric that cannot work."""

from __future__ import annotations

import json
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError, apply_overrides, build_config

# Metrics the training loop reports every epoch (plus dev_<name> for each of the task's metrics).
REPORTED_METRICS = {"dev_metric", "best_dev_metric", "train_loss", "first_step_loss", "samples_per_s", "epoch",
                    "epoch_s", "aligner_loss", "aligner_dev_metric", "loss_task", "loss_soft", "loss_manifold"}


def _override_str(path: str, value: Any) -> str:
    return f"{path}={json.dumps(value)}"


def trial_config(base: dict[str, Any], params: dict[str, Any], run_name: str) -> ArmadaConfig:
    """The config of one trial: the base config plus the trial's overrides."""
    overrides = [_override_str(k, v) for k, v in params.items()] + [f"run_name={run_name}"]
    return build_config(apply_overrides(base, overrides))


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
