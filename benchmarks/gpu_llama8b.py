"""Tokens/s, MFU and peak memory of a LLaMA-3-8B-shaped ARMADA student through the project's own training code.

`armada train` on 1 GPU via Ray Train: random weights from the Llama-3-8B config (no download), DeepSpeed ZeRO-3,
bf16, the ARMADA heads and loss, LoRA and full fine-tuning, sequence 512 (BBC articles are long enough to fill
it), plus the undistilled (loss.mode=baseline) step-time ratio. The same script runs with tiny shapes on CPU
(`--quick`, or automatically when no GPU is present): then it checks the plumbing, not the GPU figures.

MFU = model FLOPs per token × tokens/s ÷ peak FLOP/s, with model FLOPs per token = 6·N for full fine-tuning
(forward 2N + backward 4N) and 4·N for LoRA (no weight gradients for the frozen N; adapter FLOPs ignored),
N = parameters of the student (no LM head), attention FLOPs ignored; peak = 989 TFLOP/s dense bf16 (H100 SXM),
overridable with --peak-tflops. Goal: MFU ≥ 45 %.
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

os.environ.setdefault("ARMADA_CACHE_DIR", str(Path.home() / ".cache" / "armada-ray"))
from armada_ray.train.ops import DEFAULT_EXTENSIONS_DIR  # noqa: E402 - after ARMADA_CACHE_DIR is set

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))


def run(base: list[str], *extra: str) -> dict:
    from armada_ray.config import load_config
    from armada_ray.train.trainer import run_train

    cfg = load_config(ROOT / "jobs" / "demo.yaml", [*base, *extra])
    summary = run_train(cfg)
    return json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["history"][0]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, < 3 min; prints, does not save")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = ap.parse_args()
    gpu = torch.cuda.is_available() and not args.quick
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    shape = "llama3-8b-shape" if gpu else "tiny-llama"
    seq, batch, steps = (512, 4, 12) if gpu else (64, 4, 5)
    work = Path(tempfile.mkdtemp(prefix="armada-bench-8b-"))
    base = [f"paths.work_dir={work}", "task.name=bbc_topics", f"task.max_train={batch * steps + batch}",
            "task.max_dev=8", "task.max_test=8", "teacher={kind: hf, model: minilm, stand_in: true}",
            f"student.model={shape}", f"student.max_length={seq}", "student.lora.layers_to_transform=null",
            "student.lora.r=8", "student.gradient_checkpointing=true", f"train.batch_size={batch}",
            "train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.zero_stage=3", "tracking.enabled=false",
            "aligner.hidden=768", "aligner.proj_dim=1024", "train.report_every=4", "scaling.num_workers=1",
            f"scaling.use_gpu={'true' if gpu else 'false'}", "scaling.cpus_per_worker=1"]
    if gpu:  # the fit check sizes plans by this GPU, not the 80 GiB default (the full leg's 112 GiB was refused)
        base.append(f"scaling.gpu_memory_gb={torch.cuda.get_device_properties(0).total_memory / 2**30:.1f}")

    from armada_ray.config import load_config
    from armada_ray.embed import run_embed
    from armada_ray.model.hub import resolve_model_path
    from armada_ray.ray_utils import ensure_ray
    from armada_ray.train.memory import model_shape

    ensure_ray()
    run_embed(load_config(ROOT / "jobs" / "demo.yaml", base))
    n_params = model_shape(resolve_model_path(shape))["params"]
    rows = {}
    t0 = time.perf_counter()
    for label, extra in (("lora", ["student.lora.enabled=true"]), ("full", ["student.lora.enabled=false"])):
        try:
            armada = run(base, *extra, f"run_name={label}-armada")
            baseline = run(base, *extra, "loss.mode=baseline", f"run_name={label}-baseline")
        except Exception as exc:  # noqa: BLE001 - one leg failing (e.g. refused as too big) must not lose the other
            rows[label] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(json.dumps({"leg": label, **rows[label]}), flush=True)
            continue
        tok_s = batch * seq / armada["step_s_median"]
        flops_per_token = (4 if label == "lora" else 6) * n_params
        rows[label] = {
            "tokens_per_s": round(tok_s, 1),
            "mfu": round(flops_per_token * tok_s / (args.peak_tflops * 1e12), 4) if gpu else None,
            "peak_mem_gib": round(armada.get("peak_mem_gib", 0.0), 2) if gpu else None,
            "armada_vs_undistilled": round(armada["step_s_median"] / baseline["step_s_median"], 4),
            "step_s": round(armada["step_s_median"], 4),
        }
        print(json.dumps({"leg": label, **rows[label]}), flush=True)  # each leg's figures as soon as they exist
    device = torch.cuda.get_device_name(0) if gpu else "cpu (tiny shapes: plumbing only, no GPU figures)"
    emit({
        "name": "gpu_llama8b",
        "value": rows["lora"].get("mfu"),
        "unit": "MFU",
        "device": device,
        "student_shape": shape,
        "params": n_params,
        "seq": seq, "batch": batch, "steps": steps,
        "lora": rows["lora"],
        "full": rows["full"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "notes": "value = MFU of the LoRA run (null on CPU); see the module docstring for the FLOP formula",
    }, args.quick or not gpu)


if __name__ == "__main__":
    main()
