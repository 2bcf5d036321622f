"""The teacher for a ``teacher`` config section: dispatch on ``kind`` to hf, diffusion or http.

Importing the kinds is cheap (each loads torch, transformers or aiohttp only when it first needs them), so a
driver can build a teacher to read its fingerprint and dimension without loading any weights.
"""

from __future__ import annotations

from typing import Any

from armada_ray.teachers.diffusion import DiffusionTeacher
from armada_ray.teachers.hf import HFTeacher
from armada_ray.teachers.http import HttpTeacher


def build_teacher(cfg_teacher: Any, limiter: Any = None, device: str | None = None) -> Any:
    """The teacher for a ``teacher`` config section (hf, diffusion or http).

    Construction is cheap: models load on the first ``embed`` call. ``limiter`` (http only) is a
    :class:`armada_ray.teachers.limits.Limiter` shared by every client of one job.
    """
    kind = getattr(cfg_teacher, "kind", None)
    if kind == "hf":
        return HFTeacher(cfg_teacher, device=device)
    if kind == "diffusion":
        return DiffusionTeacher(cfg_teacher, device=device)
    if kind == "http":
        return HttpTeacher(cfg_teacher, limiter=limiter)
    raise ValueError(f"unknown teacher kind {kind!r} (allowed: hf, diffusion, http)")


def teacher_fingerprint(cfg_teacher: Any, device: str | None = None) -> dict[str, Any]:
    """The fingerprint of a teacher config, without loading any weights or contacting any endpoint; ``device``:
    where the vectors are computed (the embed actors'; see ``EmbedConfig.teacher_device``)."""
    return build_teacher(cfg_teacher, device=device).fingerprint()
