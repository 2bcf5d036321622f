"""Who opens the cache: the driver resolves the teacher identity once, a worker opens the cache by it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from armada_ray.cache.store import MANIFEST, CacheMismatchError, TeacherCache
from armada_ray.config import ConfigError
from armada_ray.fingerprint import TeacherIdentity, fingerprint_id as _fingerprint_id
from armada_ray.teachers.factory import teacher_fingerprint


def teacher_config_key(cfg: Any) -> str:
    """A hash of what :func:`resolve_teacher_identity` reads from a config: the teacher section (less the shuffle
    ablation, which reads the same vectors), where its vectors are computed and the cache root."""
    teacher = cfg.teacher.model_dump(mode="json", exclude={"shuffle", "shuffle_seed"})
    return _fingerprint_id({"teacher": teacher, "device": cfg.embed.teacher_device, "root": str(cfg.cache_root)})


def resolve_teacher_identity(cfg: Any, known: TeacherIdentity | None = None) -> TeacherIdentity | None:
    """The identity of ``cfg.teacher``'s existing cache under ``cfg.cache_root`` (None when it was never embedded),
    for the driver to hand to its workers. ``known``: an identity resolved earlier (by the driver), returned as it
    is when it was resolved from this config's teacher, without fingerprinting the teacher again."""
    key = teacher_config_key(cfg)
    if known is not None and known.resolved_from == key:
        return known
    cache = open_cache_for(cfg)
    if cache is None:
        return None
    return TeacherIdentity(fingerprint=cache.fingerprint, fingerprint_id=cache.fingerprint_id,
                           cache_path=str(cache.path), dim=cache.dim, dtype=cache.dtype,
                           stand_in=bool(getattr(cfg.teacher, "stand_in", False)), resolved_from=key)


def open_cache(identity: TeacherIdentity) -> TeacherCache:
    """The cache a driver resolved (a worker's side: no teacher is built, nothing is fingerprinted)."""
    path = Path(identity.cache_path)
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"teacher cache {path}: no {MANIFEST} on this node, although the driver found the "
                          f"teacher's vectors there; cache.dir must be storage that every node reads")
    cache = TeacherCache(path.parent, identity.fingerprint, identity.dim, identity.dtype, create=False)
    if cache.fingerprint_id != identity.fingerprint_id:
        raise CacheMismatchError(f"teacher cache {path}: the identity's fingerprint_id {identity.fingerprint_id} "
                                 f"is not its fingerprint's ({cache.fingerprint_id})")
    return cache


def open_cache_for(cfg: Any) -> TeacherCache | None:
    """The existing cache of ``cfg.teacher`` under ``cfg.cache_root`` (None when it was never embedded); the
    driver's side: it fingerprints the teacher (a worker opens the cache by the driver's identity instead)."""
    return TeacherCache.open_existing(cfg.cache_root, teacher_fingerprint(cfg.teacher, device=cfg.embed.teacher_device))
