"""``armada report``: the seeded study of what distillation transfers (issue 12).

For every setup (task × student × teacher) of ``report.setups`` and every seed of ``report.seeds``: the
linear probe (the teacher's ceiling), the undistilled baseline, ARMADA with each manifold loss, both shuffle
controls, a random frozen aligner, α = 0 and β = 0. Each cell selects its epoch on dev and reports test at
that epoch; the table gives mean ± 95 % interval over seeds and the paired difference to the baseline of
the same seed with a paired t-test. The scientific outcome is reported, never asserted.

Cells run in this process, one after another, on a one-rank :class:`~armada_ray.train.session.LocalSession`
(no Ray): a Ray Train run pays ≈ 30 s of start-up before its first step, which would dominate a study of
dozens of one-minute cells on one machine. Every cell still goes through the one training loop
(``ArmadaWorker``) with DeepSpeed, so what is measured is what ``armada train`` does. A cell that fails is
recorded with its error and the study goes on; a plan that cannot run is refused before any training.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from armada_ray.cache import open_cache_for, resolve_teacher_identity
from armada_ray.config import ArmadaConfig, ConfigError, apply_overrides, build_config
from armada_ray.plan import check_plan
from armada_ray.probe import probe_for_config
from armada_ray.tracking import KIND_REPORT, RunTracker
from armada_ray.train import ops

# variant -> overrides on the setup's config (the controls keep the setup's own manifold loss)
VARIANT_OVERRIDES: dict[str, list[str]] = {
    "baseline": ["loss.mode=baseline"],
    "armada-cosine": ["loss.manifold=cosine"],
    "armada-euclid": ["loss.manifold=euclid"],
    "armada-pointwise": ["loss.manifold=pointwise"],
    "shuffle-pairs": ["teacher.shuffle=pairs"],
    "shuffle-targets": ["teacher.shuffle=targets"],
    "random-aligner": ["aligner.freeze_random=true"],
    "alpha0": ["loss.alpha=0"],
    "beta0": ["loss.beta=0"],
    "transfer": [],  # task.transfer_rows=report.transfer_rows (beyond the paper)
}
ARMADA_VARIANTS = ("armada-cosine", "armada-euclid", "armada-pointwise")


# ----------------------------------------------------------------------------------------------- statistics

def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); half-width NaN with fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()), half


def paired(variant: list[float], baseline: list[float]) -> dict[str, float]:
    """Paired difference variant − baseline over seeds, in points (×100): mean, 95 % interval, t-test p."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(variant, baseline) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    diffs = [100.0 * (a - b) for a, b in pairs]
    mean, half = mean_ci95(diffs)
    p = math.nan  # also when every seed gives the same difference: a t-test is undefined at zero variance
    if len(diffs) >= 2 and np.std(diffs) > 1e-9:  # float noise of equal differences is not variance
        p = float(stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    return {"gain_points": mean, "gain_ci95_low": mean - half if math.isfinite(half) else math.nan,
            "gain_ci95_high": mean + half if math.isfinite(half) else math.nan, "p_value": p, "pairs": len(diffs)}


# ----------------------------------------------------------------------------------------------- the plan

def setup_configs(cfg: ArmadaConfig) -> list[tuple[str, ArmadaConfig, bool]]:
    """(name, config, self-distillation flag) of every setup; the config itself when none is listed."""
    base = cfg.model_dump(mode="json")
    out = []
    for setup in cfg.report.setups or []:
        try:
            out.append((setup.name, build_config(apply_overrides(base, setup.overrides)), setup.self_distillation))
        except ConfigError as exc:
            raise ConfigError([f"report.setups[{setup.name}]: {p}" for p in exc.problems]) from None
    return out or [(cfg.task.name, cfg, False)]


def cell_config(setup_cfg: ArmadaConfig, variant: str, seed: int) -> ArmadaConfig:
    data = setup_cfg.model_dump(mode="json")
    over = [*VARIANT_OVERRIDES[variant], f"train.seed={seed}", "tracking.enabled=false",
            f"run_name=report-{variant}-seed{seed}"]
    if variant == "transfer":
        over.append(f"task.transfer_rows={setup_cfg.report.transfer_rows}")
    return build_config(apply_overrides(data, over))


def check_report_plan(cfg: ArmadaConfig) -> list[tuple[str, ArmadaConfig, bool]]:
    """Refuse, before any training, a study that cannot run: every problem of every setup, one line each."""
    setups = setup_configs(cfg)
    problems: list[str] = []
    distilled = [v for v in cfg.report.variants if v != "baseline"]
    for name, scfg, _ in setups:
        probe_cfg = scfg if not distilled else scfg.model_copy(update={"loss": scfg.loss.model_copy(
            update={"mode": "armada"})})
        try:
            check_plan(probe_cfg)
            if "transfer" in cfg.report.variants:  # its rows need teacher vectors too
                from armada_ray.train.data import build_splits  # lazy: loads torch

                tcfg = cell_config(scfg, "transfer", cfg.report.seeds[0])
                build_splits(tcfg, with_teacher=True, cache=open_cache_for(tcfg))
        except ConfigError as exc:
            problems += [f"report setup {name!r}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return setups


# ----------------------------------------------------------------------------------------------- running

def run_cell(cfg: ArmadaConfig, session: Any) -> dict[str, Any]:
    """One training run in this process through the one loop; its dev/test scores and timings."""
    from armada_ray.train.loop import ArmadaWorker  # lazy: loads torch and DeepSpeed

    t0 = time.perf_counter()
    teacher = resolve_teacher_identity(cfg) if cfg.loss.mode == "armada" else None  # the cell's driver is here
    worker = ArmadaWorker(cfg, session, parent_run_id=None, eval_test=True, teacher=teacher)
    t_ready = time.perf_counter()
    worker.run()
    state = worker.state
    epochs_s = sum(h.get("epoch_s", 0.0) for h in state["history"])
    wall = time.perf_counter() - t0
    out = {"dev": state["best_dev_metric"], "test": state.get("test_at_best_dev"),
           "aligner_dev": state.get("best_aligner_metric"), "probe_dev": (state.get("probe") or {}).get(
               "probe_dev_metric"), "wall_s": round(wall, 2), "setup_s": round(t_ready - t0, 2),
           "overhead_s": round(wall - epochs_s, 2), "epochs": state["epoch"]}
    worker.engine.destroy()  # DeepSpeed's global references (hooks, optimizer state) would outlive the cell
    del worker
    gc.collect()
    return out


def run_report(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada report``: plan, probe, run every cell, write report.md/report.json, log a parent MLflow run."""
    from armada_ray.train.session import LocalSession  # lazy: loads torch

    t_start = time.perf_counter()
    setups = check_report_plan(cfg)
    seeds, variants = cfg.report.seeds, cfg.report.variants
    ops.use_extensions_dir()
    session = LocalSession.create("cuda" if cfg.scaling.use_gpu else "cpu", quiet=True)
    n_cells = len(setups) * len(seeds) * len(variants)
    print(f"[armada report] {len(setups)} setup(s) x {len(variants)} variants x {len(seeds)} seeds = {n_cells} "
          f"runs in this process (no Ray start-up per run)", flush=True)
    probes: dict[str, dict[str, Any]] = {}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(n, v): [] for n, _, _ in setups for v in variants}
    done = 0
    for name, scfg, _ in setups:
        try:
            probes[name] = probe_for_config(scfg)
            print(f"[armada report] {name}: probe dev {probes[name]['probe_dev_metric']:.4f} "
                  f"(floor {probes[name]['floor_dev_metric']:.4f})", flush=True)
        except Exception as exc:  # noqa: BLE001 - the probe is a cell like any other
            probes[name] = {"error": f"{type(exc).__name__}: {exc}"}
    # seed-major: a study stopped early still holds every variant for the seeds it finished, and what it
    # finished is on disk (report.partial.json) after every run
    for seed in seeds:
        for name, scfg, _ in setups:
            for variant in variants:
                done += 1
                try:
                    run = run_cell(cell_config(scfg, variant, seed), session)
                except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the study goes on
                    run = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                runs[(name, variant)].append({"seed": seed, **run})
                print(f"[armada report] {done}/{n_cells} {name} {variant} seed {seed}: "
                      + (f"dev {run['dev']:.4f} test {run['test']:.4f} aligner {_fmt(run['aligner_dev'])} "
                         f"({run['wall_s']:.0f} s)" if "error" not in run else f"FAILED {run['error']}"), flush=True)
                partial = _summarize(cfg, setups, _cells(setups, variants, runs), probes, time.perf_counter() - t_start)
                _out_dir(cfg).mkdir(parents=True, exist_ok=True)
                (_out_dir(cfg) / "report.partial.json").write_text(json.dumps(partial, indent=2, default=_json_default))
    cells = _cells(setups, variants, runs)
    result = _summarize(cfg, setups, cells, probes, time.perf_counter() - t_start)
    _write(cfg, result)
    return result


def _cells(setups: list[tuple[str, ArmadaConfig, bool]], variants: list[str],
           runs: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [_cell(name, scfg, v, runs[(name, v)], self_distill) for name, scfg, self_distill in setups
            for v in variants if runs[(name, v)]]


def _out_dir(cfg: ArmadaConfig) -> Path:
    return cfg.report.out or cfg.work_dir / "reports" / cfg.name


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else "-"


def _cell(setup: str, scfg: ArmadaConfig, variant: str, runs: list[dict[str, Any]], self_distill: bool
          ) -> dict[str, Any]:
    test = [r.get("test") for r in runs]
    mean, half = mean_ci95([t for t in test if t is not None])
    teacher = scfg.teacher
    return {"setup": setup, "task": scfg.task.name, "student": scfg.student.model,
            "teacher": f"{teacher.kind}:{teacher.model}" + (" (stand-in)" if teacher.stand_in else ""),
            "self_distillation": self_distill, "variant": variant, "seed_scores": test,
            "dev_scores": [r.get("dev") for r in runs], "aligner_dev": [r.get("aligner_dev") for r in runs],
            "mean": mean, "ci95": half, "errors": [r["error"] for r in runs if "error" in r],
            "wall_s": round(sum(r.get("wall_s", 0.0) for r in runs), 1), "runs": runs}


def _summarize(cfg: ArmadaConfig, setups: list[tuple[str, ArmadaConfig, bool]], cells: list[dict[str, Any]],
               probes: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    by = {(c["setup"], c["variant"]): c for c in cells}
    for c in cells:
        base = by.get((c["setup"], "baseline"))
        c["vs_baseline"] = paired(c["seed_scores"], base["seed_scores"]) if base and c["variant"] != "baseline" else None
    headline_setup = next((n for n, s, _ in setups if s.task.name == "bbc_topics"), setups[0][0])
    armada = [c for c in cells if c["setup"] == headline_setup and c["variant"] in ARMADA_VARIANTS and c["vs_baseline"]]
    best = max(armada, key=lambda c: _nan_low(c["vs_baseline"]["gain_points"]), default=None)
    overheads = [r["overhead_s"] for c in cells for r in c["runs"] if "overhead_s" in r]
    aligner = [a for c in cells if c["setup"] == headline_setup and c["variant"] in ARMADA_VARIANTS
               for a in c["aligner_dev"] if a is not None]
    probe = probes.get(headline_setup, {})
    return {
        "name": "ablation", "unit": "points",
        "value": best["vs_baseline"]["gain_points"] if best else math.nan,
        "best_variant": best["variant"] if best else None,
        "gain_ci95_low": best["vs_baseline"]["gain_ci95_low"] if best else math.nan,
        "p_value": best["vs_baseline"]["p_value"] if best else math.nan,
        "headline_setup": headline_setup,
        "probe": probe.get("probe_dev_metric"), "probe_floor": probe.get("floor_dev_metric"),
        "aligner_dev": float(np.mean(aligner)) if aligner else None,
        "probes": probes, "cells": cells, "seeds": cfg.report.seeds, "variants": cfg.report.variants,
        "wall_s": round(wall_s, 1),
        "per_run_overhead_s": round(float(np.median(overheads)), 2) if overheads else None,
    }


def _nan_low(x: float) -> float:
    return -math.inf if x is None or not math.isfinite(x) else x


# ----------------------------------------------------------------------------------------------- outputs

def markdown(result: dict[str, Any]) -> str:
    """The report's table: one row per setup × variant."""
    lines = [f"Seeds: {', '.join(map(str, result['seeds']))}. Test metric at the best dev epoch; mean ± 95 % "
             "interval over seeds; Δ = paired difference to the baseline of the same seed, in points, with its "
             "95 % interval and a paired t-test p.", ""]
    for setup in dict.fromkeys(c["setup"] for c in result["cells"]):
        rows = [c for c in result["cells"] if c["setup"] == setup]
        probe = result["probes"].get(setup, {})
        first = rows[0]
        note = " — self-distillation (student = teacher model)" if first["self_distillation"] else ""
        lines.append(f"**{setup}**: task {first['task']}, student {first['student']}, teacher {first['teacher']}"
                     f"{note}. Linear probe on the teacher vectors (dev): {_fmt(probe.get('probe_dev_metric'))}, "
                     f"majority floor {_fmt(probe.get('floor_dev_metric'))}.")
        lines += ["", "| variant | test (mean ± 95 %) | dev | Δ vs baseline (points) | p | aligner dev | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for c in rows:
            vs = c["vs_baseline"]
            delta = "—" if not vs else (f"{vs['gain_points']:+.1f} [{vs['gain_ci95_low']:+.1f}, "
                                        f"{vs['gain_ci95_high']:+.1f}]")
            p = "—" if not vs or not math.isfinite(vs["p_value"]) else f"{vs['p_value']:.3f}"
            dev_mean, _ = mean_ci95([d for d in c["dev_scores"] if d is not None])
            al_mean, _ = mean_ci95([a for a in c["aligner_dev"] if a is not None])
            err = f" ({len(c['errors'])} failed: {c['errors'][0][:80]})" if c["errors"] else ""
            lines.append(f"| {c['variant']}{err} | {_fmt(c['mean'])} ± {_fmt(c['ci95'])} | {_fmt(dev_mean)} | "
                         f"{delta} | {p} | {_fmt(al_mean)} | {c['wall_s']:.0f} |")
        lines.append("")
    lines.append(f"Wall time {result['wall_s']:.0f} s; per-run overhead (wall − epochs, median) "
                 f"{result['per_run_overhead_s']} s.")
    return "\n".join(lines)


def _write(cfg: ArmadaConfig, result: dict[str, Any]) -> None:
    out = _out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown(result) + "\n")
    result["report_dir"] = str(out)
    print("\n" + markdown(result), flush=True)
    if not cfg.tracking.enabled:
        return
    try:
        from armada_ray import plots  # lazy: loads matplotlib

        tracker = RunTracker.start(cfg, run_name=f"report-{cfg.name}", kind=KIND_REPORT, local_dir=out)
        tracker.log_metrics({k: float(result[k]) for k in ("value", "gain_ci95_low", "wall_s")
                             if isinstance(result.get(k), (int, float)) and math.isfinite(result[k])})
        tracker.log_figure(plots.plot_ablation(result["cells"], result["probes"]), "plots/ablation.png")
        tracker.log_artifact(out / "report.md")
        tracker.log_artifact(out / "report.json")
        result["mlflow_run_id"] = tracker.run_id
        tracker.end("FINISHED")
    except Exception as exc:  # noqa: BLE001 - the report is on disk whatever MLflow does
        print(f"[armada report] warning: MLflow unavailable ({exc})", flush=True)


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return str(v)
