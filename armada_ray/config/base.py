"""What every config section shares: the closed pydantic base and the path field types."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator


def _absolute(path: Path | None) -> Path | None:
    """Resolve a path once, in the process that loads the config (the driver).

    Ray workers and Tune trials run in other working directories (Ray's per-run artifacts folder), so a
    relative ``./armada_runs`` resolved there names another folder (issue 13). Every path field is therefore
    absolute from validation on; the resolved config that travels to the workers holds only absolute paths.
    """
    return None if path is None else path.expanduser().resolve()


AbsPath = Annotated[Path, AfterValidator(_absolute)]


def _model_ref(value: str | None) -> str | None:
    """A model given as a path to an existing local folder (``./my-model``, ``models/bert``, ``~/m``) made absolute,
    like :func:`_absolute`; an alias or hub id as given. A bare folder name stays as given (it reads as an alias)."""
    if value is None or not (value.startswith((".", "~")) or "/" in value):
        return value
    local = Path(value).expanduser()
    return str(local.resolve()) if local.is_dir() else value


ModelRef = Annotated[str, AfterValidator(_model_ref)]


def _storage(value: str | None) -> str | None:
    """A URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``) as given; a local folder made absolute."""
    if value is None or "://" in value:
        if value is not None and not value.split("://", 1)[1].strip("/"):
            raise ValueError(f"{value!r} names no bucket or folder")
        return value
    return str(Path(value).expanduser().resolve())


StorageLocation = Annotated[str | None, AfterValidator(_storage)]


def _numeric(annotation: Any) -> bool:
    """True for an int/float field (optionally | None) that does not also accept a bool."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return bool(set(args) & {int, float}) and bool not in args


class Section(BaseModel):
    """Base of every section: closed (a typo is an error), validated on assignment, no inf/nan."""

    # inf/nan are refused everywhere (issue 13: loss.beta=.inf and train.lr=inf were accepted)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        """``train.epochs=true`` became 1: a boolean given for a number fails that field's validation."""
        if isinstance(data, dict):
            bad = {k: _BoolGiven(v) for k, v in data.items() if isinstance(v, bool) and k in cls.model_fields
                   and _numeric(cls.model_fields[k].annotation)}
            if bad:
                data = {**data, **bad}
        return data


class _BoolGiven:
    """Stands in for a boolean given where a number is expected, so the field's own error names key and value."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()} (a boolean, not a number)"


def default_kind(data: Any, key: str, kind: str) -> Any:
    """Let ``teacher.x=...`` overrides (or YAML) omit ``kind``: the section default's kind applies."""
    if isinstance(data, dict) and isinstance(data.get(key), dict) and "kind" not in data[key]:
        data = dict(data)
        data[key] = {"kind": kind, **data[key]}
    return data
