"""The resolved config written out: YAML saved with every run (credentials masked), flat MLflow params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from armada_ray.config.redact import redact_values
from armada_ray.config.root import ArmadaConfig


def dump_config(cfg: ArmadaConfig) -> str:
    """The resolved config as YAML (saved with every run), with credentials inside URLs masked (issue 13: a
    key in ``teacher.endpoint=http://user:KEY@host/v1`` was saved in clear). Nothing reads a saved config's
    endpoint to reach the teacher: training reads the cache, and the cache fingerprint ignores credentials."""
    return yaml.safe_dump(redact_values(cfg.model_dump(mode="json")), sort_keys=False)


def save_config(cfg: ArmadaConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "config.yaml"
    out.write_text(dump_config(cfg))
    return out


def flatten(cfg: ArmadaConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattened ``a.b -> value`` view (MLflow params). Holds no secrets: keys live only in env vars."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
