"""A race-free read of the process environment.

Library threads (MLflow's telemetry, Ray, DeepSpeed) set and unset variables while our code runs, and
``os.environ`` is a Python-level mapping: iterating it while another thread deletes a key raises
``KeyError`` (the key was listed, then vanished before its read) or ``RuntimeError`` (the underlying dict
changed size mid-iteration). Every walk of the environment in this package goes through :func:`snapshot`.
"""

from __future__ import annotations

import os

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
