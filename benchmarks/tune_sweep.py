"""A Tune sweep reads the teacher cache, never the teacher: teacher calls per dataset row, and what running two
trials at once buys on this machine.

One run: the loopback teacher server (real MiniLM stand-in) → `armada embed` → a sweep of N trials with
2 concurrent trials → the same sweep with 1 concurrent trial. value = rows the teacher answered ÷ dataset rows
(goal exactly 1.0);
concurrency_speedup = wall(1 concurrent) ÷ wall(2 concurrent). Full mode also times `armada demo` on a fresh
work dir (demo_wall_s); --quick uses 2 trials of the tiny LLaMA student and skips the demo (null, see notes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced size, < 3 min on 2 cores; prints, does not save")
    args = ap.parse_args()
    trials = 2 if args.quick else 4
    work = Path(tempfile.mkdtemp(prefix="armada-bench-tune-"))
    base = [f"paths.work_dir={work}", "task.name=pang_lee_polarity", "task.max_train=24", "task.max_dev=16",
            "task.max_test=16", "student.model=tiny-llama", "student.lora.layers_to_transform=null",
            "student.max_length=32", "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=1",
            "scaling.cpus_per_worker=0.9", f"tune.num_samples={trials}", "tune.include_baseline=false",
            "tune.scheduler=fifo", "tracking.register_model=false", "server.port=0"]

    from armada_ray.config import load_config
    from armada_ray.embed import run_embed
    from armada_ray.ray_utils import ensure_ray
    from armada_ray.teachers.server import start_server_in_thread
    from armada_ray.tune import run_tune

    cfg = load_config(ROOT / "jobs" / "demo.yaml", base)
    ensure_ray()
    server = start_server_in_thread(cfg.server)
    try:
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"endpoint": server.url})})
        rows_before = server.stats()["rows"]
        stats = run_embed(cfg)
        walls = {}
        # untimed warm-up sweep (1 trial): the first Train run of a process pays one-time costs (worker
        # start-up, imports, model files into the page cache) that would otherwise land on whichever sweep ran first
        run_tune(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"num_samples": 1}),
                                        "run_name": "sweep-warmup"}))
        for conc in (2, 1):
            c = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"max_concurrent_trials": conc}),
                                       "run_name": f"sweep-c{conc}"})
            t0 = time.perf_counter()
            run_tune(c)
            walls[conc] = time.perf_counter() - t0
        answered = server.stats()["rows"] - rows_before
    finally:
        server.stop()
    demo_wall = None
    notes = [f"{trials} trials x 2 sweeps (concurrency 2, then 1) of tiny-llama on pang_lee_polarity "
             f"({stats['rows']} rows); the teacher answered {answered} rows in all (embed's fail-fast probe "
             "sends a real row and keeps its vector)"]
    if not args.quick:
        demo_work = Path(tempfile.mkdtemp(prefix="armada-bench-demo-"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "armada_ray.cli", "demo", "--config", "jobs/demo.yaml",
                        f"paths.work_dir={demo_work}"], cwd=ROOT, check=True)
        demo_wall = round(time.perf_counter() - t0, 1)
    else:
        notes.append("demo_wall_s: not measured in --quick (the demo alone takes minutes); full mode runs it")
    emit({
        "name": "tune_sweep",
        "value": round(answered / stats["rows"], 4),
        "unit": "ratio",
        "trials": trials,
        "rows": stats["rows"],
        "teacher_rows_answered": answered,
        "concurrency_speedup": round(walls[1] / walls[2], 3),
        "sweep_wall_s_concurrency_2": round(walls[2], 1),
        "sweep_wall_s_concurrency_1": round(walls[1], 1),
        "demo_wall_s": demo_wall,
        "notes": notes,
    }, args.quick)


if __name__ == "__main__":
    main()
