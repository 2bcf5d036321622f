"""Teachers: the protocol, the three kinds and the loopback teacher server. No Ray imports here.

- :mod:`~armada_ray.teachers.base`: ``Teacher`` protocol, ``build_teacher``, fingerprints, ``EmbedResult``;
- :mod:`~armada_ray.teachers.hf`: a local transformers model (pooled hidden state);
- :mod:`~armada_ray.teachers.diffusion`: the paper's Stable Diffusion txt2img -> img2img latent recipe;
- :mod:`~armada_ray.teachers.http`: an OpenAI-compatible black-box API (rate limits, retries, validation);
- :mod:`~armada_ray.teachers.limits`: the job-wide ``Limiter`` protocol and its in-process implementation;
- :mod:`~armada_ray.teachers.server`: ``armada serve-teacher``, an OpenAI-compatible server for any local teacher.

Kinds load lazily: importing this package imports neither torch nor aiohttp.
"""

from armada_ray.teachers.base import (
    EmbedResult,
    Teacher,
    TeacherAuthError,
    TeacherError,
    TeacherUnavailableError,
    build_teacher,
    canonical_json,
    fingerprint_id,
    render_prompt,
    teacher_fingerprint,
)
from armada_ray.teachers.limits import Limiter, LocalLimiter

__all__ = [
    "EmbedResult",
    "Limiter",
    "LocalLimiter",
    "Teacher",
    "TeacherAuthError",
    "TeacherError",
    "TeacherUnavailableError",
    "build_teacher",
    "canonical_json",
    "fingerprint_id",
    "render_prompt",
    "teacher_fingerprint",
]
