"""The rows of a plan check: one :class:`Check` per concern, and which concerns each command needs.

A check function takes plain data (the config, a loaded task, a cluster view, a cache view, the student's
shape) and returns its :class:`Check`; nothing here starts Ray or touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.plan.sweep import check_sweep
from armada_ray.tasks import task_spec
from armada_ray.train.ds_config import check_ds_settings

OK, FAIL, SKIP = "ok", "FAIL", "skip"

# The checks in table order (a refusal names the failing numbers).
ALL_CHECKS = ("config", "task", "teacher", "cache", "memory", "cluster", "tracking")
# Which checks each command needs; the others are listed as skip.
NEEDS: dict[str, tuple[str, ...]] = {
    "train": ALL_CHECKS,
    "tune": ALL_CHECKS,
    "demo": ALL_CHECKS,
    "embed": ("config", "task", "teacher", "cache", "cluster"),
    "eval": ("config", "task", "tracking"),
    "export": ("config", "tracking"),
    "serve-teacher": ("config", "teacher"),
    "ui": ("config", "tracking"),
    "tasks": ("config",),
}
TRAINS = ("train", "tune")  # commands that read the teacher cache and need it complete
ENCODER_TYPES = ("bert", "roberta", "deberta", "deberta-v2", "electra", "distilbert")


@dataclass
class Check:
    """One row: its status, a one-line detail, the problems that refuse the plan, and figures for ``--json``."""

    name: str
    status: str = SKIP
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def set(self, status: str, detail: str, **data: Any) -> "Check":
        self.status, self.detail = status, detail
        if status == FAIL and not self.problems:
            self.problems = [detail]
        self.data.update(data)
        return self

    def fail(self, problems: list[str], **data: Any) -> "Check":
        self.problems = list(problems)
        return self.set(FAIL, "; ".join(problems), **data)


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_config(cfg: ArmadaConfig, command: str) -> Check:
    """DeepSpeed settings against the hardware, and a sweep's search space and metric (``armada tune``)."""
    check = Check("config")
    problems = check_ds_settings(cfg.train, cfg.scaling, on_gpu=cfg.scaling.use_gpu)
    spec = task_spec(cfg.task)
    if command == "tune":
        try:
            check_sweep(cfg, spec.metrics)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        return check.fail(problems)
    return check.set(OK, f"valid; ZeRO-{cfg.train.zero_stage}, precision {cfg.train.precision}, "
                         f"{cfg.scaling.num_workers} worker(s), task {cfg.task.name} ({spec.kind})")


def check_task(cfg: ArmadaConfig, data: Any, error: str | None = None) -> Check:
    """The task loaded with its caps: rows per split."""
    check = Check("task")
    if data is None:
        return check.fail([f"task {cfg.task.name!r} does not load: {error}"])
    sizes = data.sizes()
    return check.set(OK, f"{cfg.task.name}: {sizes['train']} train / {sizes['dev']} dev / {sizes['test']} test rows"
                         + (f" ({len(data.skipped)} unusable source rows skipped)" if data.skipped else ""), **sizes)


def student_problems(cfg: ArmadaConfig, task_kind: str, shape: dict[str, Any]) -> list[str]:
    """Cross-field rules between the student model (its config's ``shape``), ``student.*`` and the task kind,
    which the worker would otherwise only meet while building the student."""
    s = cfg.student
    model_type = shape["model_type"]
    is_encoder = model_type in ENCODER_TYPES
    problems = []
    if task_kind == "generative" and is_encoder:
        problems.append(f"config error: task.name={cfg.task.name!r} is generative and needs a decoder (causal LM) "
                        f"student; student.model={s.model!r} is a {model_type} encoder")
    if is_encoder and s.kind == "decoder" or not is_encoder and s.kind == "encoder":
        problems.append(f"config error: student.kind={s.kind!r} but {s.model} is a "
                        f"{model_type} model ({'encoder' if is_encoder else 'decoder'})")
    if is_encoder and s.pooling in ("last", "first"):
        problems.append(f"config error: student.pooling={s.pooling!r} is for decoder students; "
                        f"{s.model} is an encoder: allowed auto, context, cls, pooler")
    layers = shape.get("layers") or 0
    if layers and s.freeze_layers_below is not None and s.freeze_layers_below > layers:
        problems.append(f"config error: student.freeze_layers_below={s.freeze_layers_below}: {s.model} has "
                        f"{layers} layers")
    lora_layers = s.lora.layers_to_transform if s.lora.enabled else None
    if layers and lora_layers is not None and (not lora_layers or any(not 0 <= i < layers for i in lora_layers)):
        problems.append(f"config error: student.lora.layers_to_transform={list(lora_layers)!r}: {s.model} has "
                        f"layers 0..{layers - 1}")
    return problems
