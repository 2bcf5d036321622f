"""The teacher protocol, per-row results and the helpers every kind shares.

A *teacher* turns prompts into fixed-size vectors. Every kind (``hf``, ``diffusion``, ``http``) answers
the same four things:

- ``dim``: the output dimension (``None`` only for an http teacher whose ``teacher.dim`` is unset, until
  its first reply);
- ``embed(texts) -> np.ndarray [N, dim] float32``: all rows or an exception;
- ``embed_rows(texts) -> EmbedResult``: vectors plus a per-row ok flag and failure reason, so that one
  bad row (a malformed reply, a wrong dimension, NaN) is quarantined instead of failing the job;
- ``fingerprint() -> dict``: what determines the vectors (kind, model id + revision or endpoint + model
  name, generation settings, prompt template, output dim). Its stable short hash,
  :func:`armada_ray.fingerprint.fingerprint_id`, names the cache folder, so a change of teacher or recipe never
  reuses stale vectors. A fingerprint never holds a secret (API keys live only in environment variables).

This module imports none of the kinds; :mod:`armada_ray.teachers.factory` builds one from its config section.
This package imports no Ray: ``embed.py`` wraps it in Ray Data actors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from armada_ray.fingerprint import fingerprint_id

FINGERPRINT_VERSION = 1


class TeacherError(RuntimeError):
    """The teacher cannot work at all (bad credentials, unreachable endpoint, missing model): fatal."""


class TeacherAuthError(TeacherError):
    """401/403 from the teacher API. The message names the env var, never the key."""


class TeacherUnavailableError(TeacherError):
    """The endpoint could not be reached (connection refused, DNS, timeouts) after every retry."""


def render_prompt(template: str, text: str) -> str:
    """Apply ``teacher.prompt_template`` (a ``str.format`` template with one ``{text}`` field)."""
    return template.format(text=text)


@dataclass
class EmbedResult:
    """Vectors for a list of prompts with a per-row status.

    ``vectors[i]`` is meaningful only where ``ok[i]``; failed rows are zero-filled and carry a short
    machine-readable reason such as ``"wrong_dim: got 3, expected 384"``. ``stats`` holds counters
    (requests, retries, tokens, ...) that the fan-out sums across actors.
    """

    vectors: np.ndarray
    ok: np.ndarray
    reasons: list[str | None]
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int, dim: int) -> "EmbedResult":
        return cls(np.zeros((n, dim), np.float32), np.zeros(n, bool), [None] * n)

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())


@runtime_checkable
class Teacher(Protocol):
    """What every teacher kind provides (see the module docstring)."""

    kind: str

    @property
    def dim(self) -> int | None: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def embed_rows(self, texts: list[str]) -> EmbedResult: ...

    def fingerprint(self) -> dict[str, Any]: ...

    def fingerprint_id(self) -> str: ...


class LocalTeacher:
    """Shared behaviour of teachers that run a model in this process (hf, diffusion)."""

    kind = "local"
    stand_in: bool = False

    def fingerprint(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint())

    def embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_rows(self, texts: list[str]) -> EmbedResult:
        """``embed`` plus per-row validation (non-finite rows are reported, not returned)."""
        if not texts:
            return EmbedResult.empty(0, self.dim or 0)
        vectors = np.asarray(self.embed(list(texts)), dtype=np.float32)
        return validate_rows(vectors, self.dim, len(texts), stats={"rows": float(len(texts))})

    def describe(self) -> str:
        fp = self.fingerprint()
        tag = " (STAND-IN teacher)" if self.stand_in else ""
        return f"{fp['kind']}:{fp.get('model')}{tag} dim={fp.get('dim')}"


def validate_rows(
    vectors: np.ndarray, dim: int | None, n: int, stats: dict[str, float] | None = None
) -> EmbedResult:
    """Check shape and finiteness row by row; bad rows become failures with a reason."""
    out_dim = dim if dim is not None else (vectors.shape[1] if vectors.ndim == 2 else 0)
    result = EmbedResult.empty(n, out_dim)
    result.stats = dict(stats or {})
    if vectors.ndim != 2 or vectors.shape[0] != n:
        for i in range(n):
            result.reasons[i] = f"malformed_output: shape {tuple(vectors.shape)} for {n} rows"
        return result
    if dim is not None and vectors.shape[1] != dim:
        for i in range(n):
            result.reasons[i] = f"wrong_dim: got {vectors.shape[1]}, expected {dim}"
        return result
    finite = np.isfinite(vectors).all(axis=1)
    result.vectors[finite] = vectors[finite]
    result.ok[:] = finite
    for i in np.flatnonzero(~finite):
        result.reasons[i] = "non_finite: the vector holds NaN or inf"
    return result


def check_vector(values: Any, dim: int | None) -> tuple[np.ndarray | None, str | None]:
    """Validate one reply vector (a JSON list): (array, None) or (None, reason)."""
    if not isinstance(values, list) or not values:
        return None, f"malformed_reply: embedding is {type(values).__name__}, not a non-empty list"
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        return None, "malformed_reply: embedding holds non-numeric values"
    if arr.ndim != 1:
        return None, f"malformed_reply: embedding has shape {arr.shape}"
    if dim is not None and arr.shape[0] != dim:
        return None, f"wrong_dim: got {arr.shape[0]}, expected {dim}"
    if not np.isfinite(arr).all():
        return None, "non_finite: the vector holds NaN or inf"
    return arr, None


def resolve_dtype(name: str, device: str) -> Any:
    """``auto`` = bf16 on a GPU that supports it (else fp16), fp32 on CPU."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def dtype_tag(name: str, device: str) -> str:
    """The compute dtype of a local teacher's vectors, for its fingerprint (issue 15: CPU fp32 and GPU half-precision
    vectors must not share one cache). ``auto`` on a GPU is bf16 where supported, else fp16: a driver without a
    GPU cannot tell which, so it is recorded as ``auto-cuda``."""
    if name != "auto":
        return name
    return "auto-cuda" if str(device).startswith("cuda") else "float32"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x
