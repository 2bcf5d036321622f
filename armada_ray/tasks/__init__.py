"""Tasks: the registry, loaders (Hugging Face Hub, local TSV/JSONL, packaged offline data) and metrics.

Plain Python: no Ray, no torch. ``load_task(cfg.task)`` returns a :class:`TaskData` with fixed, seeded
train/dev/test splits; ``example_prompt(spec, ex)`` is the paper's prompt (lower-cased text fields joined
by spaces); ``compute_metrics(spec, preds, refs)`` scores predictions with the task's metrics.
"""

from armada_ray.tasks.base import (
    Example,
    MissingPackageError,
    TaskData,
    TaskSpec,
    build_prompt,
    example_prompt,
    student_text,
)
from armada_ray.tasks.metrics import METRICS, compute_metrics
from armada_ray.tasks.registry import get_task, list_tasks, load_task, register, run_list_tasks, task_spec

__all__ = [
    "Example",
    "METRICS",
    "MissingPackageError",
    "TaskData",
    "TaskSpec",
    "build_prompt",
    "compute_metrics",
    "example_prompt",
    "student_text",
    "get_task",
    "list_tasks",
    "load_task",
    "register",
    "run_list_tasks",
    "task_spec",
]
