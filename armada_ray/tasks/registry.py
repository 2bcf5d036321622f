"""The task registry: every task by name, ``load_task`` and the ``armada tasks`` listing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from armada_ray.config import ConfigError
from armada_ray.tasks import files
from armada_ray.tasks.base import TaskData, TaskSpec
from armada_ray.tasks.generative import GENERATIVE_TASKS
from armada_ray.tasks.glue import GLUE_TASKS, SUPERGLUE_TASKS
from armada_ray.tasks.offline import OFFLINE_TASKS

if TYPE_CHECKING:
    from armada_ray.config import ArmadaConfig, TaskConfig

REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task (a plugin or a test may register its own); names are unique."""
    if spec.name in REGISTRY:
        raise ValueError(f"task {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


for _spec in (*OFFLINE_TASKS, *GLUE_TASKS, *SUPERGLUE_TASKS, *GENERATIVE_TASKS, files.placeholder_spec()):
    register(_spec)


def list_tasks() -> list[TaskSpec]:
    """Every registered task, in registration order (offline, GLUE, SuperGLUE, generative)."""
    return list(REGISTRY.values())


def get_task(name: str) -> TaskSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"task.name={name!r}: unknown task; known: {', '.join(REGISTRY)}") from None


def task_spec(task_cfg: "TaskConfig") -> TaskSpec:
    """The spec of ``task_cfg`` without loading it: the registered task's, or what a file task declares
    (its inferred labels are known only once loaded: ``load_task(...).spec``)."""
    if task_cfg.name == files.NAME:
        return files.spec_for(task_cfg)
    return get_task(task_cfg.name)


def load_task(task_cfg: "TaskConfig") -> TaskData:
    """Load ``task_cfg.name`` with its fixed seeded splits and the ``max_*`` caps applied."""
    spec = get_task(task_cfg.name)
    return spec.loader(spec, task_cfg)


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_list_tasks(cfg: "ArmadaConfig") -> dict[str, Any]:
    """``armada tasks``: print the registry as a table and return ``{"tasks": [names]}``."""
    header = ("name", "kind", "text fields", "labels / answer", "metric", "source")
    rows = []
    for spec in list_tasks():
        answer = ", ".join(spec.labels) if spec.labels else (spec.answer_format or "score")
        if spec.choices:
            answer += f" ({'/'.join(spec.choices)})"
        rows.append((spec.name, spec.kind, ", ".join(spec.text_fields), _cell(answer, 40),
                     " + ".join(spec.metrics), spec.source))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), flush=True)
    print(f"\n{len(rows)} tasks; the current config uses task.name={cfg.task.name!r}. Your own data: task.name=files "
          "with task.files (or task.hub), task.text_fields, task.label_field (README: 'Your own data')", flush=True)
    return {"tasks": [spec.name for spec in list_tasks()], "n_tasks": len(rows)}
