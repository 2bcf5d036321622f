"""The seeded study of issue 12: does the student learn from the teacher, and which part of ARMADA does it?

One run: `armada embed` (the teacher's vectors, transfer rows included) → `armada report` (every variant ×
seed in one process) → one `armada train` of the baseline cell through Ray Train, whose start-up beside the
report's in-process cells is the per-run overhead before/after. value = mean paired test gain (points) of
the best ARMADA variant (cosine/euclid/pointwise) over the undistilled baseline on bbc_topics.

Full: every setup of jobs/ablation.yaml as committed (bbc_topics with SmolLM2-135M LoRA taught by MiniLM, and
with MiniLM taught by SmolLM2; tweet_sentiment with SmolLM2, and with MiniLM self-distilled (marked so);
rg_syllogism through the generative path; 3 seeds, all variants + transfer; about 3 h on 2 cores), saved to
benchmarks/results/ablation.json.

--only NAME[,NAME]: run just those setups of the YAML and merge their cells into the committed result (the other
setups' cells, the headline and the overhead stay as they were; each merged study's setups and wall time are
listed under `studies`).

--quick: the tiny LLaMA student on 24 pang_lee rows, 2 seeds, 3 variants; printed only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit  # noqa: E402

QUICK = ["task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=12", "task.max_test=12",
         "student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
         "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=1", "report.seeds=[1, 2]",
         "report.variants=[baseline, armada-cosine, armada-pointwise]", "report.setups=[]"]


def armada(*args: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "armada_ray.cli", *args, "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    last = ""
    for line in proc.stdout:  # progress stays visible (on stderr); the JSON line is the last one
        sys.stderr.write(line)
        last = line if line.strip() else last
    if proc.wait() != 0:
        raise SystemExit(f"armada {args[0]} failed with exit {proc.returncode}")
    return json.loads(last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced size, < 3 min on 2 cores; prints, does not save")
    ap.add_argument("--only", default="", help="comma-separated setup names; their cells are merged into the result")
    args = ap.parse_args()
    base = ["--config", "jobs/ablation.yaml"]
    if args.only:
        return _run_only(base, [n.strip() for n in args.only.split(",") if n.strip()])
    if args.quick:
        base += [f"paths.work_dir={tempfile.mkdtemp(prefix='armada-bench-ablation-')}", *QUICK]
    t0 = time.perf_counter()
    transfer = [] if args.quick else ["task.transfer_rows=160"]  # = report.transfer_rows: the transfer cells' rows
    for setup in _setups(base) or [{"overrides": []}]:  # each setup's teacher (and task) has its own cache
        armada("embed", *base, *setup["overrides"], *transfer)
    result = armada("report", *base)
    # the same baseline cell through Ray Train: its start-up is what each in-process cell does not pay
    seed = result["seeds"][0]
    setup = result["cells"][0]["setup"]
    over = next((s["overrides"] for s in _setups(base) if s["name"] == setup), [])
    ray_run = armada("train", *base, *over, "loss.mode=baseline", f"train.seed={seed}", "tracking.enabled=false",
                     f"run_name=ablation-overhead-{int(time.time())}")
    history = json.loads((Path(ray_run["run_dir"]) / "summary.json").read_text())["history"]
    before = ray_run["wall_s"] - sum(h.get("epoch_s", 0.0) for h in history)
    cell = next(c for c in result["cells"] if c["variant"] == "baseline")
    result.update({"per_run_overhead_s_ray_train": round(before, 2),
                   "baseline_seed_test_in_process": cell["seed_scores"][0],
                   "baseline_seed_dev_ray_train": ray_run["best_dev_metric"],
                   "benchmark_wall_s": round(time.perf_counter() - t0, 1)})
    if args.quick:  # the per-run details stay in the full result only
        for c in result["cells"]:
            c.pop("runs", None)
    emit(result, quick=args.quick)


def _run_only(base: list[str], names: list[str]) -> None:
    """Run the named setups (embed + report) and merge their cells into benchmarks/results/ablation.json."""
    from _common import RESULTS

    t0 = time.perf_counter()
    chosen = [s for s in _setups(base) if s["name"] in names]
    missing = sorted(set(names) - {s["name"] for s in chosen})
    if missing:
        raise SystemExit(f"--only: no setup named {', '.join(missing)} in {base[1]}")
    for setup in chosen:
        armada("embed", *base, *setup["overrides"], "task.transfer_rows=160")
    # JSON is YAML flow syntax: the chosen setups replace report.setups for this run
    result = armada("report", *base, f"report.setups={json.dumps(chosen)}")
    path = RESULTS / "ablation.json"
    merged = json.loads(path.read_text())
    merged["cells"] = [c for c in merged["cells"] if c["setup"] not in names] + result["cells"]
    merged["probes"] = {**merged.get("probes", {}), **result["probes"]}
    merged.setdefault("studies", [{"setups": sorted({c["setup"] for c in merged["cells"]} - set(names)),
                                   "wall_s": merged["wall_s"]}])
    merged["studies"].append({"setups": names, "wall_s": result["wall_s"],
                              "benchmark_wall_s": round(time.perf_counter() - t0, 1),
                              "load_avg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()]})
    path.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in merged.items() if k != "cells"}, default=str), flush=True)


def _setups(base: list[str]) -> list[dict]:
    from armada_ray.config import load_config

    cfg = load_config(base[1], base[2:])
    return [s.model_dump() for s in cfg.report.setups]


if __name__ == "__main__":
    main()
