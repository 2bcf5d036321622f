"""Print the capacity tables of cluster/CAPACITY.md (every figure an estimate, with its formula).

    .venv/bin/python cluster/capacity.py            # all tables, markdown (about 20 s on 2 CPU cores)
    .venv/bin/python cluster/capacity.py --gpus 8 --mfu 0.4 --sd-util 0.35 --usd-per-gpu-hour 4.0

No weights are read and nothing is downloaded: the students are built from their published configs on PyTorch's
``meta`` device (exact parameter counts), the Stable Diffusion FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on a meta SD-v1 UNet/VAE/CLIP (the shapes of
``armada_ray.teachers.diffusion``'s ``sd-v1-shape``), and memory per GPU comes from
``armada_ray.train.memory.estimate``, the same estimate the preflight and ``check_plan`` use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA datasheet)
GIB = 1024**3

# Published configs of the paper's students (no weights needed). "LLaMA 3B" is taken as Llama-3.2-3B and
# "LLaMA 7B" as Llama-2-7B, the 3B/7B members closest to the paper's LLaMA-3-8B.
STUDENTS = {
    "LLaMA-3-8B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=8, intermediate_size=14336, vocab_size=128256)),
    "LLaMA-2-7B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=32, intermediate_size=11008, vocab_size=32000)),
    "LLaMA-3.2-3B": ("llama", dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                                   num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                   tie_word_embeddings=True)),
    "DeBERTa-v2-xxlarge": ("deberta-v2", dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24,
                                              intermediate_size=6144, vocab_size=128100,
                                              max_position_embeddings=512, relative_attention=True,
                                              position_buckets=256, pos_att_type=["p2c", "c2p"],
                                              position_biased_input=False, share_att_key=True,
                                              conv_kernel_size=3, norm_rel_ebd="layer_norm", type_vocab_size=0)),
}
# GLUE/SuperGLUE sizes (rows of the official train/validation/test files)
TASK_ROWS = {"rte": (2490, 277, 3000), "boolq": (9427, 3270, 3245)}


def student_shape(name: str) -> dict:
    from transformers import DebertaV2Config, LlamaConfig

    from armada_ray.train import memory

    kind, kw = STUDENTS[name]
    config = LlamaConfig(**kw) if kind == "llama" else DebertaV2Config(**kw)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return memory.model_shape(tmp)


def memory_table(shapes: dict, gpus: int, seq: int, batch: int, lora_r: int, lora_targets: int,
                 budget_gib: float) -> list[str]:
    from armada_ray.train import memory

    rows = ["| student | method | ZeRO | offload | params | trainable | weights | grads | optimizer | "
            "activations | **total GiB/GPU** | fits 80 GB H100 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, shape in shapes.items():
        for method in ("LoRA", "full"):
            lora = memory.lora_param_count(shape, lora_r, lora_targets, None) if method == "LoRA" else None
            for stage in (2, 3):
                for offload in (False, True):
                    e = memory.estimate(shape, lora_params=lora, zero_stage=stage, workers=gpus, precision="bf16",
                                        offload=offload, batch=batch, seq=seq, grad_checkpointing=False,
                                        available_gib=budget_gib, device="GPU")
                    rows.append(
                        f"| {name} | {method} | {stage} | {'yes' if offload else 'no'} | {e.params / 1e9:.2f} B | "
                        f"{e.trainable_params / 1e6:,.1f} M | {e.weights_gib:.1f} | {e.grads_gib:.2f} | "
                        f"{e.optimizer_gib:.2f} | {e.activations_gib:.1f} | **{e.total_gib:.1f}** | "
                        f"{'yes' if e.fits else 'NO'} |")
    return rows


def throughput_table(shapes: dict, gpus: int, mfu: float, seq: int) -> list[str]:
    rows = ["| student | method | FLOPs/token | tokens/s per H100 | tokens/s on "
            f"{gpus} H100 | RTE epoch ({TASK_ROWS['rte'][0]} x {seq} tok) | BoolQ epoch ({TASK_ROWS['boolq'][0]} x "
            f"{seq} tok) |", "|---|---|---|---|---|---|---|"]
    for name, shape in shapes.items():
        n = shape["params"]
        for method, k in (("LoRA", 4), ("LoRA + grad ckpt", 6), ("full", 6), ("full + grad ckpt", 8)):
            per_gpu = mfu * H100_BF16_PEAK / (k * n)
            total = per_gpu * gpus
            rte = TASK_ROWS["rte"][0] * seq / total
            boolq = TASK_ROWS["boolq"][0] * seq / total
            rows.append(f"| {name} | {method} | {k}·N = {k * n / 1e9:.1f} GFLOP | {per_gpu:,.0f} | {total:,.0f} | "
                        f"{rte:.1f} s | {boolq:.1f} s |")
    return rows


def sd_flops(steps: int = 20, strength: float = 0.75) -> dict[str, float]:
    """FLOPs of the SD recipe for one prompt, counted on meta tensors (classifier-free guidance: batch 2)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlog
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    from armada_ray.teachers.diffusion import _SD_V1

    dlog.set_verbosity_error()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**_SD_V1["unet"])
        vae = AutoencoderKL(**_SD_V1["vae"])
        clip = CLIPTextModel(CLIPTextConfig(**_SD_V1["text"], vocab_size=49408, max_position_embeddings=77))

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn()
        return float(fc.get_total_flops())

    def unet_eval(side: int) -> float:
        x = torch.empty(2, 4, side, side, device="meta")
        e = torch.empty(2, 77, 768, device="meta")
        return count(lambda: unet(x, torch.zeros(2, device="meta"), encoder_hidden_states=e))

    i2i_steps = int(steps * strength)  # diffusers' img2img runs int(steps * strength) of the schedule
    parts = {
        "clip_text_x2_per_pipeline": count(lambda: clip(torch.zeros(2, 77, dtype=torch.long, device="meta"))),
        "unet_512px_cfg": unet_eval(64),
        "unet_128px_cfg": unet_eval(16),
        "vae_decode_512px": count(lambda: vae.decode(torch.empty(1, 4, 64, 64, device="meta"))),
        "vae_encode_128px": count(lambda: vae.encode(torch.empty(1, 3, 128, 128, device="meta"))),
        "txt2img_steps": steps,
        "img2img_steps": i2i_steps,
        "unet_params": sum(p.numel() for p in unet.parameters()),
    }
    parts["per_example"] = (2 * parts["clip_text_x2_per_pipeline"] + steps * parts["unet_512px_cfg"]
                            + parts["vae_decode_512px"] + parts["vae_encode_128px"]
                            + i2i_steps * parts["unet_128px_cfg"])
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8, help="data-parallel GPU workers (default 8)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default: student.max_length=128)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch per GPU (default: train.batch_size=8)")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank (jobs/glue_llama3_8b.yaml: 64)")
    p.add_argument("--lora-targets", type=int, default=4, help="adapted matrices per layer (q,k,v,o: 4)")
    p.add_argument("--mfu", type=float, default=0.40, help="assumed model-FLOPs utilisation of training")
    p.add_argument("--sd-util", type=float, default=0.35, help="assumed FLOPs utilisation of SD inference")
    p.add_argument("--usd-per-gpu-hour", type=float, default=None, help="price for the cost lines (optional)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--trial-gpus", type=int, default=2, help="GPUs per trial (jobs/sweep_alpha_beta.yaml: 2)")
    p.add_argument("--trial-epochs", type=int, default=3)
    p.add_argument("--trial-seq", type=int, default=256, help="jobs/sweep_alpha_beta.yaml: student.max_length")
    p.add_argument("--trial-startup-s", type=float, default=180.0,
                   help="assumed per-trial start-up: workers, 16 GB weights from shared storage, DeepSpeed init")
    args = p.parse_args(argv)
    budget = 80 * 0.9  # scaling.gpu_memory_gb x scaling.memory_headroom

    shapes = {name: student_shape(name) for name in STUDENTS}
    out = [f"### Memory per GPU (estimated: armada_ray.train.memory; bf16, {args.gpus} GPUs, seq {args.seq}, "
           f"batch {args.batch}/GPU, no gradient checkpointing, LoRA r={args.lora_r} on {args.lora_targets} "
           f"matrices/layer; budget {budget:.0f} GiB = 80 x 0.9 headroom)", ""]
    out += memory_table(shapes, args.gpus, args.seq, args.batch, args.lora_r, args.lora_targets, budget)
    out += ["", f"### Training throughput on H100 (estimated: tokens/s per GPU = MFU x 989e12 / (k·N), "
                f"MFU = {args.mfu:.0%} assumed; k = 6 full, 4 LoRA, +2 with gradient checkpointing)", ""]
    out += throughput_table(shapes, args.gpus, args.mfu, args.seq)

    sd = sd_flops()
    per_s = args.sd_util * H100_BF16_PEAK / sd["per_example"]
    out += ["", f"### Stable Diffusion teacher fan-out (estimated: FLOPs counted on meta tensors; time = FLOPs / "
                f"({args.sd_util:.0%} x 989e12) per H100)", "",
            "| part | FLOPs | count per example | FLOPs per example |", "|---|---|---|---|",
            f"| CLIP text encoder (cond + uncond) | {sd['clip_text_x2_per_pipeline'] / 1e12:.3f} T | 2 pipelines | "
            f"{2 * sd['clip_text_x2_per_pipeline'] / 1e12:.3f} T |",
            f"| UNet at 64x64 latent (512 px), batch 2 (CFG) | {sd['unet_512px_cfg'] / 1e12:.3f} T | "
            f"{sd['txt2img_steps']} steps | {sd['txt2img_steps'] * sd['unet_512px_cfg'] / 1e12:.2f} T |",
            f"| VAE decode 512 px (txt2img image) | {sd['vae_decode_512px'] / 1e12:.3f} T | 1 | "
            f"{sd['vae_decode_512px'] / 1e12:.3f} T |",
            f"| VAE encode 128 px (img2img start) | {sd['vae_encode_128px'] / 1e12:.3f} T | 1 | "
            f"{sd['vae_encode_128px'] / 1e12:.3f} T |",
            f"| UNet at 16x16 latent (128 px), batch 2 (CFG) | {sd['unet_128px_cfg'] / 1e12:.3f} T | "
            f"{sd['img2img_steps']} steps (20 x strength 0.75) | "
            f"{sd['img2img_steps'] * sd['unet_128px_cfg'] / 1e12:.3f} T |",
            f"| **total** | | | **{sd['per_example'] / 1e12:.1f} T** |", "",
            f"=> {1 / per_s:.3f} s per example, {per_s:.1f} examples/s per H100, "
            f"{per_s * 3600:,.0f} examples per GPU-hour.", "",
            "| task | unique prompts (train+dev+test) | GPU-hours | wall on 8 GPUs |" + (
                " cost |" if args.usd_per_gpu_hour else ""),
            "|---|---|---|---|" + ("---|" if args.usd_per_gpu_hour else "")]
    for task, rows in TASK_ROWS.items():
        n = sum(rows)
        gpu_h = n / per_s / 3600
        cost = f" ${gpu_h * args.usd_per_gpu_hour:,.2f} |" if args.usd_per_gpu_hour else ""
        out.append(f"| {task} | {n:,} | {gpu_h:.2f} | {gpu_h * 60 / 8:.1f} min |{cost}")

    n8 = shapes["LLaMA-3-8B"]["params"]
    tok_s = args.mfu * H100_BF16_PEAK / (6 * n8) * args.trial_gpus  # LoRA + gradient checkpointing: 6N
    rte_train, rte_dev, _ = TASK_ROWS["rte"]
    epoch_s = rte_train * args.trial_seq / tok_s + rte_dev * args.trial_seq / (tok_s * 3)  # dev: forward, 2N
    full_epochs = args.trial_epochs
    asha_epochs = sum(0.5**k for k in range(args.trial_epochs))  # grace 1, reduction 2: 1 + 1/2 + 1/4
    trials = args.trials + 1  # + the undistilled baseline (tune.include_baseline)
    gpu_h_full = trials * args.trial_gpus * (args.trial_startup_s + full_epochs * epoch_s) / 3600
    gpu_h_asha = trials * args.trial_gpus * (args.trial_startup_s + asha_epochs * epoch_s) / 3600
    out += ["", f"### A {args.trials}-trial sweep (estimated; jobs/sweep_alpha_beta.yaml: LLaMA-3-8B LoRA + "
                f"gradient checkpointing, {args.trial_gpus} GPUs per trial, RTE, seq {args.trial_seq}, "
                f"{args.trial_epochs} epochs, ASHA grace 1 / reduction 2, + 1 baseline trial)", "",
            f"- epoch time per trial = {rte_train} x {args.trial_seq} tokens / {tok_s:,.0f} tok/s "
            f"(+ dev forward) = {epoch_s:.0f} s",
            f"- GPU-hours = trials x GPUs/trial x (start-up {args.trial_startup_s:.0f} s + epochs x epoch time) / 3600",
            f"- no early stopping ({full_epochs} epochs each): {gpu_h_full:.2f} GPU-hours; with ASHA "
            f"(expected {asha_epochs:.2f} epochs per trial): {gpu_h_asha:.2f} GPU-hours; wall with 4 trials at "
            f"once on 8 GPUs: {gpu_h_asha / (4 * args.trial_gpus) * 60:.0f}-{gpu_h_full / (4 * args.trial_gpus) * 60:.0f} min"
            + (f"; cost ${gpu_h_asha * args.usd_per_gpu_hour:,.2f}-${gpu_h_full * args.usd_per_gpu_hour:,.2f}"
               if args.usd_per_gpu_hour else ""),
            "- plus the teacher fan-out for RTE above (once; every trial reads the same cache)."]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
