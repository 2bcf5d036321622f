"""What Ray Train + DeepSpeed + the ARMADA loss cost per step, on the real SmolLM2-135M student.

In one run, on the same model, data, batch and thread count:
  (a) steady-state step time of `armada train` with 1 Ray worker + DeepSpeed ZeRO-2 ÷ a plain single-process
      torch loop (forward, loss, backward, AdamW) — goal ≤ 1.05;
  (b) ARMADA step time ÷ undistilled (loss.mode=baseline) step time — goal ≤ 1.05: measured by interleaving the
      two on the same batches in one process and engine (mean of per-batch ratios with its 95 % interval); the
      ratio of medians of two separate `armada train` runs is kept beside it (armada_vs_baseline_separate_runs);
  (c) samples/s with 1 vs 2 workers (each worker then has half the cores here: 2 cores in all).
Step times are medians over the student epoch with the first steps excluded (loop.WARMUP_STEPS); start-up
(Ray + worker set-up + DeepSpeed init + model load until the first epoch starts) is reported separately.

Full: sequence 128, LoRA r=8 on q/v of all 30 layers, batch 8, 16 steps. --quick: sequence 64, 10 steps.

The 2-worker run goes first: the first Ray Train run of a process is slower for its first several steps
(page cache, lazy imports, Ray's agents noticing a new worker; measured 3.0-3.5 s steps decaying to 2.7 s at
sequence 64), so it would bias whichever of (a)/(b) ran first. Per-step times are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit  # noqa: E402

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("ARMADA_CACHE_DIR", str(Path.home() / ".cache" / "armada-ray"))
from armada_ray.train.ops import DEFAULT_EXTENSIONS_DIR  # noqa: E402 - after ARMADA_CACHE_DIR is set

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))

from armada_ray.train.loop import WARMUP_STEPS  # noqa: E402


def overrides(work: Path, seq: int, steps: int, rows: int) -> list[str]:
    return [f"paths.work_dir={work}", "task.name=bbc_topics", f"task.max_train={rows}", "task.max_dev=16",
            "task.max_test=16", "teacher={kind: hf, model: minilm, stand_in: true}", "student.model=smollm2-135m",
            f"student.max_length={seq}", "student.lora.layers_to_transform=null", "train.batch_size=8",
            "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.report_every=100",
            "tracking.enabled=false", "aligner.hidden=256", "aligner.proj_dim=384", "train.lr=0.0002"]


def ray_run(base: list[str], *extra: str) -> dict:
    from armada_ray.config import load_config
    from armada_ray.train.trainer import run_train

    cfg = load_config(ROOT / "jobs" / "demo.yaml", [*base, *extra])
    t0 = time.perf_counter()
    summary = run_train(cfg)
    wall = time.perf_counter() - t0
    hist = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["history"][0]
    return {"step_s": hist["step_s_median"], "wall_s": wall, "epoch_s": hist["epoch_s"], "steps": hist["step_s"],
            "samples_per_s": 8 * int(cfg.scaling.num_workers) / hist["step_s_median"]}


def plain_loop(base: list[str], steps: int) -> dict:
    """The same student, data and batch in a plain torch loop: no Ray, no DeepSpeed, no teacher."""
    import numpy as np
    import torch

    from armada_ray.config import load_config
    from armada_ray.model import baseline_loss, build_student
    from armada_ray.train.data import ArmadaDataset, build_splits

    cfg = load_config(ROOT / "jobs" / "demo.yaml", base)
    torch.manual_seed(cfg.train.seed)
    spec, splits = build_splits(cfg, with_teacher=False)
    student, tok = build_student(cfg.student, num_classes=len(spec.labels), proj_dim=cfg.aligner.proj_dim,
                                 task_kind=spec.kind)
    ds = ArmadaDataset(splits["train"], tok, cfg.student.max_length)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=ds.collate)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.train.lr)
    student.train()
    times = []
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        t0 = time.perf_counter()
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = baseline_loss(out, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.clip)
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(times[WARMUP_STEPS:])), "steps": [round(t, 4) for t in times]}


def interleaved(base: list[str], steps: int) -> dict:
    """(b) resolved to a few percent: ARMADA and undistilled steps alternate on the same batches, in one process
    with one DeepSpeed engine (a one-rank LocalSession, no Ray), so the machine's drift hits both alike. Who goes
    first alternates per batch. Separate runs could not resolve 5 %: single steps vary ±15 % here."""
    import numpy as np

    from armada_ray.cache import resolve_teacher_identity
    from armada_ray.config import load_config
    from armada_ray.report import mean_ci95
    from armada_ray.train.loop import ArmadaWorker
    from armada_ray.train.session import LocalSession

    cfg = load_config(ROOT / "jobs" / "demo.yaml", base)
    worker = ArmadaWorker(cfg, LocalSession.create(quiet=True), parent_run_id=None,
                          teacher=resolve_teacher_identity(cfg))
    worker.fit_aligner()  # the aligner the student learns against (a per-run cost of seconds, not per step)
    worker.engine.train()
    worker.freeze_student_targets()  # what a student epoch does first (one aligner forward over the split)
    pairs: list[tuple[float, float]] = []
    for i, batch in enumerate(worker._loader("train", shuffle=True)):
        if i >= steps:
            break
        batch = worker._to_device(batch)
        took: dict[bool, float] = {}
        for distill in ((True, False) if i % 2 == 0 else (False, True)):
            worker.distill = distill  # the one loop's two losses: ARMADA terms on or off
            t0 = time.perf_counter()
            worker._student_step(batch)
            took[distill] = time.perf_counter() - t0
        pairs.append((took[True], took[False]))
    kept = pairs[WARMUP_STEPS:]
    mean, half = mean_ci95([a / b for a, b in kept])
    return {"ratio_mean": mean, "ratio_ci95": half, "ratio_median": float(np.median([a / b for a, b in kept])),
            "ratio_of_sums": sum(a for a, _ in kept) / sum(b for _, b in kept),
            "pairs_s": [[round(a, 4), round(b, 4)] for a, b in pairs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="reduced size (about 4-5 min on 2 cores: three Ray Train start-ups); prints, does not save")
    args = ap.parse_args()
    seq, steps = (64, 10) if args.quick else (128, 16)
    rows = steps * 8 * 2 + 8  # enough rows for `steps` steps with 1 worker and with 2 workers
    threads = os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="armada-bench-train-"))
    base = overrides(work, seq, steps, rows)

    from armada_ray.config import load_config
    from armada_ray.embed import run_embed
    from armada_ray.ray_utils import ensure_ray

    ensure_ray()
    run_embed(load_config(ROOT / "jobs" / "demo.yaml", base))  # the teacher cache the ARMADA runs read

    import torch

    torch.set_num_threads(threads)
    plain = plain_loop(base, steps)
    one = f"scaling.cpus_per_worker={threads}"
    armada_2w = ray_run(base, f"scaling.cpus_per_worker={threads / 2:g}", "scaling.num_workers=2",
                        "run_name=armada-2w")  # first: it also takes the process's first-run slowness
    baseline_1w = ray_run(base, one, "scaling.num_workers=1", "loss.mode=baseline", "run_name=baseline-1w")
    armada_1w = ray_run(base, one, "scaling.num_workers=1", "run_name=armada-1w")
    inter = interleaved(base, steps)
    ratio_a = baseline_1w["step_s"] / plain["step_s"]  # same loss (task CE on s1), so only Ray + DeepSpeed differ
    result = {
        "name": "train_overhead",
        "value": round(ratio_a, 4),
        "unit": "ratio",
        "armada_vs_baseline": round(inter["ratio_mean"], 4),
        "armada_vs_baseline_ci95": round(inter["ratio_ci95"], 4),
        "armada_vs_baseline_median": round(inter["ratio_median"], 4),
        "armada_vs_baseline_ratio_of_sums": round(inter["ratio_of_sums"], 4),
        "armada_vs_baseline_separate_runs": round(armada_1w["step_s"] / baseline_1w["step_s"], 4),
        "samples_per_s_1w": round(armada_1w["samples_per_s"], 3),
        "samples_per_s_2w": round(armada_2w["samples_per_s"], 3),
        "startup_s": round(armada_1w["wall_s"] - armada_1w["epoch_s"], 1),
        "startup_s_first_run": round(armada_2w["wall_s"] - armada_2w["epoch_s"], 1),
        "step_s_plain": round(plain["step_s"], 4),
        "step_s_ray_deepspeed_baseline": round(baseline_1w["step_s"], 4),
        "step_s_ray_deepspeed_armada": round(armada_1w["step_s"], 4),
        "student": "smollm2-135m (LoRA r=8 q/v, all 30 layers)",
        "seq": seq, "batch": 8, "steps": steps, "threads": threads, "warmup_steps_excluded": WARMUP_STEPS,
        "interleaved_pairs_s": inter["pairs_s"],
        "step_s_each": {"plain": plain["steps"], "baseline_1w": baseline_1w["steps"],
                        "armada_1w": armada_1w["steps"], "armada_2w": armada_2w["steps"]},
        "notes": "(a) compares the undistilled loss through armada train (1 Ray worker, DeepSpeed ZeRO-2, fp32, "
                 "gloo) with the same loss in a plain torch loop; startup_s = wall time of the 1-worker armada "
                 "run minus its epoch (Ray + workers + DeepSpeed init + model load + checkpoint + teardown); "
                 "startup_s_first_run: the same for the process's first Ray Train run (the 2-worker one)",
    }
    emit(result, args.quick)


if __name__ == "__main__":
    main()
