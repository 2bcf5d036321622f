"""Does the teacher cache hold what the plan reads? A :class:`CacheView` (what is cached for this teacher, per
split) and the check over it: training needs every train and dev row; ``embed`` only learns how much is left."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from armada_ray.cache import open_cache_for
from armada_ray.config import ArmadaConfig
from armada_ray.plan.checks import FAIL, OK, SKIP, TRAINS, Check, one_line
from armada_ray.teachers.prompts import teacher_prompt

SPLITS = ("train", "dev", "test")


def cache_coverage(cfg: ArmadaConfig, cache: Any, data: Any, split: str) -> tuple[int, int]:
    """(unique teacher prompts of ``split`` that have a vector in ``cache``, unique teacher prompts of ``split``);
    no cache yet (None) has none of them."""
    prompts = {teacher_prompt(cfg.teacher, data.spec, ex) for ex in data.split(split)}
    if cache is None:
        return 0, len(prompts)
    keys = sorted(cache.key_for(p) for p in prompts)
    return len(keys) - len(cache.missing(keys)), len(keys)


@dataclass
class CacheView:
    """What the teacher cache holds for this config's teacher and task (``path`` None: nothing embedded yet)."""

    root: Path
    path: Path | None = None
    dim: int | None = None
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (cached, unique prompts)
    error: str | None = None  # the cache could not be opened


def cache_view(cfg: ArmadaConfig, data: Any) -> CacheView:
    """Open this teacher's cache (if any) and count the task's prompts it covers."""
    try:
        cache = open_cache_for(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. the teacher's config cannot be read (the teacher check says why)
        return CacheView(cfg.cache_root, error=one_line(exc))
    counts = {split: cache_coverage(cfg, cache, data, split) for split in SPLITS}
    if cache is None:
        return CacheView(cfg.cache_root, counts=counts)
    return CacheView(cfg.cache_root, cache.path, cache.dim, counts)


def check_cache(cfg: ArmadaConfig, command: str, view: CacheView | None, resumed_dim: int | None = None) -> Check:
    """Coverage of ``view`` for ``command``; for training also ``teacher.dim`` and a resumed aligner's input
    dimension (``resumed_dim``) against the cached vectors."""
    check = Check("cache")
    if cfg.loss.mode != "armada" and command in TRAINS:
        return check.set(SKIP, "loss.mode=baseline reads no teacher vectors")
    if view is None:
        return check.set(SKIP, "the task did not load (check 2)")
    if view.error is not None:
        return check.set(FAIL if command in TRAINS else SKIP, f"cannot open the teacher cache: {view.error}")
    counts = view.counts
    text = ", ".join(f"{split} {have}/{total}" for split, (have, total) in counts.items())
    where = view.path or view.root
    data = {f"cache_{s}_cached": have for s, (have, _) in counts.items()}
    data.update({f"cache_{s}_prompts": total for s, (_, total) in counts.items()})
    if command not in TRAINS:
        left = sum(total - have for have, total in counts.values())
        return check.set(OK, f"{text} unique prompts cached under {where}; {left} left to query", **data)
    problems = []
    if view.path is None:
        problems.append(f"{text} unique prompts cached under {where}: nothing cached for this teacher; run "
                        f"`armada embed` for task {cfg.task.name!r} first (or loss.mode=baseline)")
    else:
        missing = [f"{counts[s][1] - counts[s][0]} of {counts[s][1]} {s} rows" for s in ("train", "dev")
                   if counts[s][0] < counts[s][1]]
        if missing:
            problems.append(f"{text} unique prompts cached under {where}: {' and '.join(missing)} of task "
                            f"{cfg.task.name!r} have no teacher vector; training needs every train and dev row: run "
                            f"`armada embed` with this config first (quarantined rows: "
                            f"{view.path / 'quarantine.jsonl'})")
        declared = getattr(cfg.teacher, "dim", None)
        if declared is not None and declared != view.dim:
            problems.append(f"config error: teacher.dim={declared} but the cached vectors have dimension {view.dim}")
        if resumed_dim is not None and resumed_dim != view.dim:
            problems.append(f"resume: the checkpoint's aligner takes teacher vectors of dimension {resumed_dim}, but "
                            f"the teacher cache holds dimension {view.dim}; start a new run (resume=false)")
    if problems:
        return check.fail(problems, **data)
    return check.set(OK, f"{text} unique prompts cached under {where} (dimension {view.dim})", **data)
