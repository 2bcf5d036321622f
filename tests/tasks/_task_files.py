"""Writing task files and loading a task from them, for the tests of tests/tasks."""

from __future__ import annotations

import json
from pathlib import Path

from armada_ray.config import TaskConfig
from armada_ray.tasks import TaskData, load_task


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, [json.dumps(r) for r in rows])


def load(name: str, data_dir: Path | None = None, **kw) -> TaskData:
    return load_task(TaskConfig(name=name, data_dir=data_dir, **kw))


def again_same_split(a: TaskData, b: TaskData) -> bool:
    """The same examples, in the same order, in every split."""
    return all([e.uid for e in a.split(s)] == [e.uid for e in b.split(s)] for s in ("train", "dev", "test"))
