"""Local teachers through the Ray Data embed path vs the same model in a plain single-process loop.

Two teachers: the hf teacher (MiniLM, real weights) and the paper's diffusion recipe (txt2img -> resize ->
img2img -> latent). On a GPU machine the diffusion teacher has SD-v1's exact shapes (``sd-v1-shape``:
UNet/VAE/CLIP-L built from configs with random weights, fp16, txt2img at 512 px, 20 steps, 128 px img2img,
1024-d latent), one actor per GPU (``embed.num_gpus_per_actor=1``). On CPU (``--quick``, or any run
without CUDA) it uses tiny shapes (``tiny``, 32 px, 4 steps) and one actor with one thread against a
one-thread plain loop, so the ratio isolates the embed path's own overhead.

Figures per teacher: plain rows/s (after load and warm-up), embed-path rows/s over the teacher-busy window
(first batch start to last batch end on the actors; excludes actor start-up and model load) and end to
end (including them), the ratio busy/plain, and rows/s per GPU. value = the diffusion recipe's ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit  # noqa: E402


def prompts(n: int) -> list[str]:
    from armada_ray.config import TaskConfig
    from armada_ray.tasks import example_prompt, load_task

    data = load_task(TaskConfig(name="tweet_sentiment", max_train=max(n, 2), max_dev=1, max_test=1))
    out = list(dict.fromkeys(example_prompt(data.spec, ex) for ex in data.train))
    return out[:n]


def plain_loop(teacher_cfg, texts: list[str], batch: int, threads: int | None) -> dict:
    import torch

    from armada_ray.teachers import build_teacher

    if threads:
        torch.set_num_threads(threads)
    t = build_teacher(teacher_cfg)
    t0 = time.monotonic()
    t.load()
    t.embed(texts[:2])  # warm-up
    load_s = time.monotonic() - t0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.monotonic()
    for i in range(0, len(texts), batch):
        t.embed_rows(texts[i : i + batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.monotonic() - t0
    del t
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"rows_per_s": len(texts) / dt, "load_s": round(load_s, 2), "s": round(dt, 2)}


def embed_path(teacher_over: list[str], texts: list[str], batch: int, actors: int, gpus: float, work: Path) -> dict:
    from armada_ray.config import load_config
    from armada_ray.embed import embed_prompts

    cfg = load_config(None, [f"paths.work_dir={work}", f"embed.batch_size={batch}", f"embed.concurrency={actors}",
                             f"embed.num_gpus_per_actor={gpus}", *teacher_over])
    st = embed_prompts(cfg, [{"prompt": p} for p in texts], log=lambda s: None)
    assert st["written"] == len(texts), st
    return {"rows_per_s_busy": st["rows_per_s"], "rows_per_s_end_to_end": len(texts) / st["fanout_s"],
            "busy_s": st["teacher_busy_s"], "fanout_s": st["fanout_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU, tiny shapes, print only")
    args = ap.parse_args()

    import torch

    from armada_ray.config import DiffusionTeacherConfig, HFTeacherConfig
    from armada_ray.ray_utils import ensure_ray
    from armada_ray.teachers import build_teacher

    gpu = torch.cuda.is_available() and not args.quick
    n_gpus = torch.cuda.device_count() if gpu else 0
    if gpu:
        hf_n, hf_batch, df_n, df_batch = 8192, 256, 64, 8
        hf_over = ["teacher.kind=hf", "teacher.model=minilm", "teacher.max_length=64", f"teacher.batch_size={hf_batch}"]
        df_over = ["teacher.kind=diffusion", "teacher.model=sd-v1-shape", "teacher.image_size=128", "teacher.steps=20",
                   f"teacher.batch_size={df_batch}"]
        actors, per_actor_gpu, threads = n_gpus, 1.0, None
    else:
        hf_n, hf_batch, df_n, df_batch = (256, 32, 12, 4) if args.quick else (1024, 32, 32, 4)
        hf_over = ["teacher.kind=hf", "teacher.model=minilm", "teacher.max_length=64", f"teacher.batch_size={hf_batch}"]
        df_over = ["teacher.kind=diffusion", "teacher.model=tiny", "teacher.image_size=32", "teacher.steps=4",
                   f"teacher.batch_size={df_batch}"]
        actors, per_actor_gpu, threads = 1, 0.0, 1  # Ray gives a 1-CPU actor one OpenMP thread: match it

    from armada_ray.config import load_config

    texts_hf, texts_df = prompts(hf_n), prompts(df_n)
    hf_cfg = load_config(None, hf_over).teacher
    df_cfg = load_config(None, df_over).teacher
    assert isinstance(hf_cfg, HFTeacherConfig) and isinstance(df_cfg, DiffusionTeacherConfig)

    plain_hf = plain_loop(hf_cfg, texts_hf, hf_batch, threads)
    plain_df = plain_loop(df_cfg, texts_df, df_batch, threads)
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="armada-gpu-teacher-"))
    ray_hf = embed_path(hf_over, texts_hf, hf_batch, actors, per_actor_gpu, work / "hf")
    ray_df = embed_path(df_over, texts_df, df_batch, actors, per_actor_gpu, work / "df")

    def ratio(r: dict, p: dict) -> float:
        return round(r["rows_per_s_busy"] / p["rows_per_s"], 4)

    result = {
        "name": "gpu_teacher",
        "value": ratio(ray_df, plain_df),
        "unit": "ratio",
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "gpus": n_gpus,
        "diffusion": {"model": df_cfg.model, "rows": len(texts_df), "dim": build_teacher(df_cfg).dim,
                      "plain_rows_per_s": round(plain_df["rows_per_s"], 3), "plain_load_s": plain_df["load_s"],
                      "embed_rows_per_s": round(ray_df["rows_per_s_busy"], 3),
                      "embed_rows_per_s_end_to_end": round(ray_df["rows_per_s_end_to_end"], 3),
                      "ratio": ratio(ray_df, plain_df),
                      "rows_per_s_per_gpu": round(ray_df["rows_per_s_busy"] / n_gpus, 3) if n_gpus else None},
        "hf": {"model": hf_cfg.model, "rows": len(texts_hf), "plain_rows_per_s": round(plain_hf["rows_per_s"], 2),
               "embed_rows_per_s": round(ray_hf["rows_per_s_busy"], 2),
               "embed_rows_per_s_end_to_end": round(ray_hf["rows_per_s_end_to_end"], 2),
               "ratio": ratio(ray_hf, plain_hf),
               "rows_per_s_per_gpu": round(ray_hf["rows_per_s_busy"] / n_gpus, 2) if n_gpus else None},
        "notes": [
            ("GPU: sd-v1-shape random weights fp16, txt2img 512 px + img2img 128 px, 20 steps; one actor per GPU"
             if gpu else "CPU: tiny shapes, 1 actor x 1 thread vs a 1-thread plain loop; no GPU measured here"),
            "embed rows/s counts the teacher-busy window on the actors; end_to_end adds actor start-up and model load",
        ],
    }
    emit(result, args.quick)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
