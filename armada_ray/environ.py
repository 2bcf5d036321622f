"""Reading the process environment: a race-free snapshot, and the job config of a submitted Ray job.

Library threads (MLflow's telemetry, Ray, DeepSpeed) set and unset variables while our code runs, and
``os.environ`` is a Python-level mapping: iterating it while another thread deletes a key raises
``KeyError`` (the key was listed, then vanished before its read) or ``RuntimeError`` (the underlying dict
changed size mid-iteration). Every walk of the environment in this package goes through :func:`snapshot`.

``ray job submit`` hands its entrypoint the job's config in :data:`JOB_CONFIG_ENV`; :func:`submitted_job_config`
and :func:`submission_id` read it without importing Ray, so tracking can tag a run with it and the orchestration
layer (``ray_utils``, the preflight) can tell a submitted job from a plain driver.
"""

from __future__ import annotations

import json
import os
from typing import Any

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

_ATTEMPTS = 50


def snapshot() -> dict[str, str]:
    """A copy of ``os.environ`` that tolerates variables appearing or vanishing while it is taken.

    Keys removed between the listing and the read are left out; a listing broken by a concurrent resize is
    retried. Never raises on a concurrent change.
    """
    keys: list[str] = []
    for _ in range(_ATTEMPTS):
        try:
            keys = list(os.environ)
            break
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    copy: dict[str, str] = {}
    for key in keys:
        value = os.environ.get(key)  # Mapping.get: None where the key vanished since the listing
        if value is not None:
            copy[key] = value
    return copy


def submitted_job_config() -> dict[str, Any] | None:
    """The job config Ray's job supervisor hands a ``ray job submit`` entrypoint (runtime env, metadata with
    ``job_submission_id``); None in a plain driver or a Ray worker, ``{}`` when it does not parse."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def job_config_section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """``config[key]`` when it is a dict, else ``{}`` (a job config is user-made JSON: any field may be odd)."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def submission_id() -> str | None:
    """This process's ``ray job submit`` submission id, if it is a submitted job's entrypoint and has one."""
    sub = job_config_section(submitted_job_config() or {}, "metadata").get("job_submission_id")
    return str(sub) if sub else None
