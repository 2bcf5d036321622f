"""``armada demo``: the embedded default end to end on one CPU box (what ``make demo`` runs).

Local Ray → the loopback OpenAI-compatible teacher server hosting a real pretrained STAND-IN teacher
(all-MiniLM-L6-v2 sentence vectors: no vision-language or diffusion weights exist on this machine) →
``armada embed`` of an offline task → ``armada tune`` (a sweep of trials, every one a Ray Train +
DeepSpeed run of a real SmolLM2-135M student with LoRA, plus the undistilled baseline) → test-set
evaluation of the best trial and the baseline → export → a summary table and the ``armada ui`` command.
A rerun reuses the teacher cache (the embed stage then queries nothing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from armada_ray.config import ArmadaConfig
from armada_ray.embed import run_embed
from armada_ray.evaluate import evaluate_on_cluster
from armada_ray.probe import try_probe
from armada_ray.ray_utils import ensure_ray
from armada_ray.teachers.server import start_server_in_thread
from armada_ray.tune import comparison_lines, run_tune


def _timed(label: str, fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    print(f"\n[armada demo] ── {label} ──", flush=True)
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_demo(cfg: ArmadaConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"work_dir": str(cfg.work_dir), "stages": {}}
    ensure_ray()
    server = start_server_in_thread(cfg.server)
    print(f"[armada demo] teacher server at {server.url} hosting {cfg.server.teacher.model} "
          f"(a STAND-IN teacher: real pretrained text-embedding vectors in place of a vision-language teacher)",
          flush=True)
    try:
        stats, dt = _timed("embed: teacher fan-out into the cache", lambda: run_embed(cfg))
        summary["stages"]["embed"] = {**stats, "wall_s": round(dt, 1)}
        summary["probe"] = _probe(cfg)
        sweep, dt = _timed("tune: sweep of ARMADA trials + undistilled baseline", lambda: run_tune(cfg))
        summary["stages"]["tune"] = {**sweep, "wall_s": round(dt, 1)}
        _eval_and_export(cfg, sweep, summary)
    finally:
        server.stop()
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    _print_table(cfg, summary)
    return summary


def _probe(cfg: ArmadaConfig) -> dict[str, Any] | None:
    """The teacher's ceiling on the task (``armada probe``), printed before any training."""
    result, line = try_probe(cfg)
    print(f"[armada demo] {line}", flush=True)
    return result


def _eval_and_export(cfg: ArmadaConfig, sweep: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = {}
    best_label = f"ARMADA best ({sweep['best_trial'].split('/')[-1]}, export)"
    runs = [(best_label, sweep["export_dir"], sweep["best_dev_metric"])]
    if not sweep.get("comparison"):  # the seeded comparison already scored the baseline on test
        runs.insert(0, ("undistilled baseline", sweep.get("baseline_checkpoint"), sweep.get("baseline_dev_metric")))
    for label, ckpt, dev in runs:
        if not ckpt:
            continue
        res, dt = _timed(f"eval on test: {label}", lambda ckpt=ckpt: evaluate_on_cluster(cfg, Path(ckpt), "test"))
        rows[label] = {"dev": dev, "test": res["metric_value"], "metric": res["metric"],
                       "predictions": res["predictions"], "eval_s": round(dt, 1)}
    summary["results"] = rows
    summary["comparison"] = sweep.get("comparison")
    summary["export_dir"] = sweep["export_dir"]


def _print_table(cfg: ArmadaConfig, summary: dict[str, Any]) -> None:
    print("\n" + "=" * 78)
    print("armada-ray demo summary  (teacher: STAND-IN all-MiniLM-L6-v2 vectors over loopback HTTP)")
    print("=" * 78)
    stages = summary["stages"]
    if "embed" in stages:
        e = stages["embed"]
        print(f"embed   rows {e.get('rows')}, cache hits {e.get('cache_hits')}, queried {e.get('queried')}, "
              f"quarantined {e.get('quarantined')}, {e['wall_s']} s -> {e.get('cache_path')}")
    if "tune" in stages:
        t = stages["tune"]
        print(f"tune    {t['trials']} trials in {t['wall_s']} s, best {t['best_trial']}: {t['best_params']}")
    results = summary.get("results", {})
    if results:
        metric = next(iter(results.values()))["metric"]
        print(f"\n{'run':<36}{'dev ' + metric:>14}{'test ' + metric:>15}")
        for label, r in results.items():
            dev = f"{r['dev']:.4f}" if r["dev"] is not None else "-"
            print(f"{label:<36}{dev:>14}{r['test']:>15.4f}")
    comparison = summary.get("comparison")
    if comparison and results:
        print("\n" + "\n".join(comparison_lines(comparison, next(iter(results.values()))["metric"])))
    probe, tune = summary.get("probe"), stages.get("tune", {})
    if probe:
        aligner = tune.get("best_aligner_dev_metric")
        line = (f"\nteacher ceiling: linear probe on the cached vectors, dev {probe['metric']} "
                f"{probe['probe_dev_metric']:.4f} (majority floor {probe['floor_dev_metric']:.4f})")
        print(line + (f"; best trial's aligner dev {aligner:.4f}" if aligner is not None else ""))
    if comparison:
        print(f"{len(comparison['seeds'])} seeds is a small sample (the interval says how small): `armada report "
              "--config jobs/ablation.yaml` runs the full study (3 seeds, every control)")
    else:
        print("one seed each: `armada report --config jobs/ablation.yaml` compares them over seeds with intervals")
    if "export_dir" in summary:
        print(f"\nexport  {summary['export_dir']}")
    if "tune" in stages and stages["tune"].get("mlflow_url"):
        print(f"mlflow  {stages['tune']['mlflow_url']}")
    print(f"total   {summary.get('wall_s')} s; work dir {summary['work_dir']}")
    print(f"\nBrowse the sweep:  armada ui --config jobs/{cfg.name}.yaml   (then open http://127.0.0.1:5000)")
