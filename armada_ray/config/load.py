"""Building an :class:`ArmadaConfig`: YAML file + ``a.b=c`` overrides, every problem reported at once."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from armada_ray.config.data import DiffusionTeacherConfig, HFTeacherConfig, HttpTeacherConfig
from armada_ray.config.errors import ConfigError
from armada_ray.config.root import ArmadaConfig


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], parsed c). Splits on the first ``=`` only; YAML parses the value."""
    if "=" not in item or item.startswith("-"):
        raise ConfigError(
            f"override {item!r}: expected key=value (e.g. loss.alpha=0.3, train.epochs=2, tune.metric=dev_metric)"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: the key must be a dotted path such as loss.alpha")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b=c`` into a nested dict (copy-on-write at each level)."""
    out = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _fields_at(loc: tuple[Any, ...]) -> tuple[list[str], tuple[str, ...]]:
    """Field names of the model addressed by ``loc`` (a pydantic error location) and the clean key path."""
    model: Any = ArmadaConfig
    clean: list[str] = []
    for part in loc:
        if isinstance(part, int):
            clean.append(str(part))
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            clean.append(str(part))
            continue
        if part not in fields:
            # a discriminated-union tag such as teacher.<http>: switch to that member's model
            for member in (HFTeacherConfig, DiffusionTeacherConfig, HttpTeacherConfig):
                if member.model_fields["kind"].default == part:
                    model = member
                    break
            else:
                clean.append(str(part))
            continue
        clean.append(str(part))
        ann = fields[part].annotation
        model = _model_of(ann)
    names = list(getattr(model, "model_fields", {}) or {})
    return names, tuple(clean)


def _model_of(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        names, clean = _fields_at(loc[:-1])
        key = ".".join([*clean, str(loc[-1])])
        near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f"; did you mean {'.'.join([*clean, near[0]])}?" if near else ""
        allowed = ", ".join(names) if names else "no keys"
        return f"config error: unknown key {key}={err.get('input')!r}{hint} (allowed here: {allowed})"
    _, clean = _fields_at(loc)
    key = ".".join(clean) or "<root>"
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        msg = f"allowed: {ctx['expected']}"
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("discriminator", "'kind'").strip("'")
        value = err.get("input", {}).get(tag) if isinstance(err.get("input"), dict) else err.get("input")
        return f"config error: {key}.{tag}={value!r}: allowed: {ctx.get('expected_tags')}"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a cross-field rule of a section
        return f"config error: {key}: {msg.removeprefix('Value error, ')}"
    return f"config error: {key}={err.get('input')!r}: {msg}"


def build_config(data: dict[str, Any]) -> ArmadaConfig:
    """Validate a nested dict into an :class:`ArmadaConfig`, reporting every problem at once."""
    try:
        return ArmadaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> ArmadaConfig:
    """Load YAML ``path`` (or the defaults when None), apply ``a.b=c`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config error: --config {str(p)!r} is a directory; give a YAML file such as "
                              "jobs/demo.yaml")
        if not p.is_file():
            raise ConfigError(f"config error: --config {str(p)!r}: no such file")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config error: --config {str(p)!r} is not UTF-8 text (byte {exc.start}); give a "
                              "YAML file") from None
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {p}: not valid YAML ({_yaml_problem(exc)})") from None
        if loaded is None:
            raise ConfigError(f"config error: {p} is empty; omit --config to run on the defaults, or start from "
                              "jobs/demo.yaml")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: {p}: the top level must be a mapping of sections")
        data = loaded
        data.setdefault("name", p.stem)
    return build_config(apply_overrides(data, overrides or []))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the last silently won)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what, and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else " ".join(str(exc).split())
