"""Which run ``resume=true`` continues, and whether its checkpoint can continue on this config."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.train import checkpoint as ckpt


def resolve_run_name(cfg: ArmadaConfig) -> ArmadaConfig:
    """Fix ``run_name``: given, the latest run of the experiment when resuming, or a new timestamped one."""
    if cfg.run_name:
        return cfg
    exp_dir = cfg.work_dir / "runs" / cfg.experiment
    if cfg.resume:
        runs = sorted((p for p in exp_dir.glob("*") if (p / "config.yaml").exists()), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ConfigError(f"config error: resume=true but no earlier run under {exp_dir}; set run_name=<name>")
        return cfg.model_copy(update={"run_name": runs[-1].name})
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.model_copy(update={"run_name": f"{cfg.task.name}-{cfg.loss.mode}-{stamp}"})


def resumed_checkpoint(cfg: ArmadaConfig) -> str | None:
    """The latest checkpoint that ``resume=true`` continues (a local folder or a storage URI), or None."""
    if not cfg.resume:
        return None
    cfg = resolve_run_name(cfg)
    ckpts = ckpt.list_checkpoints(ckpt.run_storage(cfg))
    return ckpts[-1].location if ckpts else None


def resumed_teacher_dim(latest: str | None) -> int | None:
    """The teacher dimension the resumed checkpoint's aligner was built for (None: no checkpoint or no aligner)."""
    if latest is None or not ckpt.exists(ckpt.join(latest, "aligner.pt"), kind="file"):
        return None
    import torch  # lazy: only a resumed checkpoint's aligner needs it

    local = ckpt.local_checkpoint(latest)
    return torch.load(local / "aligner.pt", map_location="cpu", weights_only=False).get("teacher_dim")


def resumed_heads_problems(cfg: ArmadaConfig, spec: Any, latest: str | None) -> list[str]:
    """A resumed checkpoint's heads were built for its task: refuse a task of another kind or width."""
    saved = ckpt.read_json(latest, "task.json") if latest is not None else None
    if saved is None:
        return []
    if saved.get("kind") == spec.kind and saved.get("num_classes") == spec.head_width:
        return []
    return [f"student/task mismatch: resume=true continues {latest}, whose student was built for task "
            f"{saved.get('task')!r} ({saved.get('kind')}, {saved.get('num_classes')} output(s)), but "
            f"task.name={cfg.task.name!r} is {spec.kind} with {spec.head_width} output(s); start a new run "
            "(resume=false or another run_name)"]
