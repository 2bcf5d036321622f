"""``armada export``: a training checkpoint -> a Hugging Face folder with ARMADA's heads and aligner beside it.

The checkpoint's DeepSpeed state is consolidated with DeepSpeed's own ``zero_to_fp32`` reader (works for
ZeRO-2 and ZeRO-3 shards alike, no process group needed), loaded into a freshly built student of the same
config, and written by the student's ``save_pretrained_parts`` (LoRA merged, or the adapter with
``export.merge=false``). The result loads with ``from_pretrained`` / ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import yaml

from armada_ray import console
from armada_ray.config import ArmadaConfig, ConfigError, build_config
from armada_ray.ray_utils import run_with_student_resources
from armada_ray.train import checkpoint as ckpt_store
from armada_ray.train.checkpoint import CKPT_TAG


def checkpoint_config(ckpt: str | Path) -> tuple[ArmadaConfig, dict[str, Any]]:
    """The resolved config and task facts stored in a checkpoint (or an export), a folder or a storage URI: only
    those two files are read (the driver checks a checkpoint this way before any copy of its weights)."""
    config_raw, task_raw = (ckpt_store.read_bytes(ckpt, name) for name in ("config.yaml", "task.json"))
    where = str(ckpt).rstrip("/")
    if config_raw is None or task_raw is None:
        raise ConfigError(f"{where}: not an armada-ray checkpoint or export (config.yaml/task.json missing)")
    try:
        task = json.loads(task_raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}/task.json: not valid JSON ({exc}); the checkpoint is damaged") from None
    try:
        return build_config(yaml.safe_load(config_raw.decode("utf-8"))), task
    except ConfigError as exc:  # name the checkpoint's file: these lines are not about the user's own config
        raise ConfigError([f"{where}/config.yaml (the checkpoint's saved config): {p}" for p in exc.problems]) \
            from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}/config.yaml: not readable YAML ({str(exc).splitlines()[0]}); the checkpoint "
                          "is damaged") from None


@contextlib.contextmanager
def _quiet_unless_verbose() -> Iterator[None]:
    """Keep a library's prints and progress bars off the console (shown with ``--verbose``)."""
    if console.verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def load_checkpoint_student(ckpt: str | Path) -> tuple[Any, Any, ArmadaConfig, dict[str, Any], Any]:
    """(student, tokenizer, config, task facts, aligner or None) from a training checkpoint (a folder, or a storage
    URI such as ``s3://…/checkpoint_000001``, copied to a local folder first: DeepSpeed's reader needs one)."""
    # lazy: torch, DeepSpeed and the student load in the worker that runs the export, not in its driver
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from armada_ray.model import build_aligner, build_student

    ckpt = ckpt_store.local_checkpoint(ckpt)
    cfg, task = checkpoint_config(ckpt)
    student, tokenizer = build_student(cfg.student, num_classes=task["num_classes"], proj_dim=cfg.aligner.proj_dim,
                                       task_kind=task["kind"])
    with _quiet_unless_verbose():  # zero_to_fp32 prints its progress (shards, parsed stages) on every load
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "deepspeed"), tag=CKPT_TAG)
    missing, unexpected = student.load_state_dict(state, strict=False)
    params = dict(student.named_parameters())
    trainable_missing = [k for k in missing if k in params and params[k].requires_grad]
    if unexpected or trainable_missing:
        raise RuntimeError(f"{ckpt}: checkpoint does not match the student built from its config "
                           f"(unexpected {unexpected[:3]}, missing trained {trainable_missing[:3]})")
    aligner = None
    if (ckpt / "aligner.pt").exists():
        blob = torch.load(ckpt / "aligner.pt", map_location="cpu", weights_only=False)
        aligner = build_aligner(cfg.aligner, teacher_dim=blob["teacher_dim"], num_classes=task["num_classes"])
        aligner.load_state_dict(blob["best"])
        aligner.eval()
    return student.eval(), tokenizer, cfg, task, aligner


def export_checkpoint(ckpt: str | Path, out_dir: Path, merge: bool = True) -> dict[str, Any]:
    """Write ``out_dir``: HF backbone (merged or adapter) + heads + tokenizer, ``aligner/``, config and task."""
    from armada_ray.model import save_aligner  # lazy: loads torch (see load_checkpoint_student)

    source = str(ckpt)
    ckpt, out_dir = ckpt_store.local_checkpoint(ckpt), Path(out_dir)
    student, tokenizer, cfg, task, aligner = load_checkpoint_student(ckpt)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    student.save_pretrained_parts(out_dir, merge=merge, tokenizer=tokenizer)
    if aligner is not None:
        save_aligner(aligner, out_dir / "aligner")
    for name in ("config.yaml", "task.json", "metrics.json"):
        if (ckpt / name).exists():
            shutil.copy(ckpt / name, out_dir / name)
    print(f"[armada] exported {source} -> {out_dir} ({'LoRA merged' if merge and student.is_lora else 'adapter' if student.is_lora else 'full weights'})",
          flush=True)
    return {"export_dir": str(out_dir), "checkpoint": source, "merged": bool(merge and student.is_lora),
            "adapter": bool(student.is_lora and not merge), "aligner": aligner is not None}


def best_checkpoint_of(cfg: ArmadaConfig) -> str:
    """The best checkpoint of the run named by ``run_name`` (default: the latest run of the experiment)."""
    exp_dir = cfg.work_dir / "runs" / cfg.experiment
    if cfg.run_name:
        candidates = [cfg.run_dir / "summary.json"]
    else:
        candidates = sorted(exp_dir.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    for summary in reversed(candidates):
        if summary.is_file():
            best = json.loads(summary.read_text()).get("best_checkpoint")
            if best and ckpt_store.exists(best):
                return best
    raise ConfigError(f"no finished run with a checkpoint under {exp_dir}; run `armada train` first or set "
                      "eval.checkpoint=<folder>")


def export_on_cluster(cfg: ArmadaConfig, ckpt: str | Path, out_dir: Path) -> dict[str, Any]:
    """:func:`export_checkpoint` as a Ray task with one training rank's resources, not in the driver (issue 15:
    an 8B export needs ≥ 45 GB of host memory, more than a cluster head has)."""
    return run_with_student_resources(cfg, export_checkpoint, str(ckpt), Path(out_dir), merge=cfg.export.merge)


def run_export(cfg: ArmadaConfig) -> dict[str, Any]:
    ckpt = cfg.eval.checkpoint or best_checkpoint_of(cfg)
    out = cfg.export.dir or (cfg.work_dir / "exports" / cfg.experiment / (cfg.run_name or ckpt_store.run_name_of(ckpt)))
    checkpoint_config(ckpt)  # a folder that is not a checkpoint is refused here, before Ray starts
    return export_on_cluster(cfg, ckpt, Path(out))
