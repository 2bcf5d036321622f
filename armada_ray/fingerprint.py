"""Teacher fingerprints and the resolved teacher identity (plain Python: no torch, no Ray, no teachers).

A teacher's *fingerprint* is a dict of what determines its vectors (see :mod:`armada_ray.teachers.base`);
:func:`fingerprint_id`, its stable short hash, names the teacher's cache folder. Both the teachers and the cache
import this module, so the cache needs no teacher to hash a fingerprint.

:class:`TeacherIdentity` is what the driver resolves once per run (``armada_ray.cache.resolve_teacher_identity``)
and hands to the workers as JSON: they open the cache by it and never rebuild a teacher to fingerprint it (an hf
teacher's fingerprint hashes a local model folder, which another node may hold differently or not at all).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any


def canonical_json(obj: Any) -> str:
    """The JSON text that fingerprints hash: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Stable 16-hex-digit id of a fingerprint dict (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(fingerprint).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TeacherIdentity:
    """One embedded teacher as the driver resolved it: its fingerprint and id, its cache folder, the stored
    vectors' dimension and dtype, whether it is a stand-in. ``resolved_from`` hashes the config parts it was
    resolved from (``armada_ray.cache.teacher_config_key``): a config with another key needs its own identity."""

    fingerprint: dict[str, Any]
    fingerprint_id: str
    cache_path: str
    dim: int
    dtype: str
    stand_in: bool = False
    resolved_from: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict (what a worker's config carries)."""
        return json.loads(canonical_json(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TeacherIdentity":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"teacher identity: unknown field(s) {', '.join(unknown)}")
        return cls(**data)
