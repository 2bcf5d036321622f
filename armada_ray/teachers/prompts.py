"""The teacher's prompt for one example: the paper's prompt construction, then the configured template.

embed.py (what is sent to the teacher) and the training data (what is looked up in the cache) both
call this one function, so a cache key computed at embed time is always found at training time.
"""

from __future__ import annotations

from typing import Any


def teacher_prompt(teacher_cfg: Any, spec: Any, example: Any) -> str:
    """``teacher.prompt_template`` applied to the lower-cased, space-joined text fields of ``example``."""
    # lazy: the task registry (~25 ms) stays out of the teachers package, which embed's actors import
    from armada_ray.tasks import example_prompt

    return teacher_cfg.prompt_template.format(text=example_prompt(spec, example))
