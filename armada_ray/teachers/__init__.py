"""Teachers: the protocol, the three kinds and the loopback teacher server. No Ray imports here.

- :mod:`~armada_ray.teachers.base`: ``Teacher`` protocol, ``EmbedResult``, what every kind shares;
- :mod:`~armada_ray.teachers.factory`: ``build_teacher`` and ``teacher_fingerprint`` from a ``teacher`` section;
- :mod:`~armada_ray.teachers.hf`: a local transformers model (pooled hidden state);
- :mod:`~armada_ray.teachers.diffusion`: the paper's Stable Diffusion txt2img -> img2img latent recipe;
- :mod:`~armada_ray.teachers.http`: an OpenAI-compatible black-box API (rate limits, retries, validation);
- :mod:`~armada_ray.teachers.limits`: the job-wide ``Limiter`` protocol and its in-process implementation;
- :mod:`~armada_ray.teachers.server`: ``armada serve-teacher``, an OpenAI-compatible server for any local teacher.

Fingerprint hashing lives in :mod:`armada_ray.fingerprint`. Importing this package imports neither torch nor
aiohttp: each kind loads its heavy libraries on first use.
"""

from armada_ray.teachers.base import (
    EmbedResult,
    Teacher,
    TeacherAuthError,
    TeacherError,
    TeacherUnavailableError,
    render_prompt,
)
from armada_ray.teachers.factory import build_teacher, teacher_fingerprint
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
    "render_prompt",
    "teacher_fingerprint",
]
