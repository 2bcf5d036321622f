"""What may be sent to MLflow: secrets dropped, names and values made valid and cut to MLflow's limits.

Parameters are scrubbed before they go anywhere (the store or the local fallback): a name that looks like a
secret is dropped, and so is any value that contains the value of a secret environment variable. URL
credentials are redacted from every value and error line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from armada_ray import environ
from armada_ray.config import redact_url_credentials

# MLflow's limits (mlflow.utils.validation, 3.17; a dataset's digest column holds 36 characters).
MAX_PARAM_VALUE_CHARS = 6000
MAX_KEY_CHARS = 250
MAX_TAG_VALUE_CHARS = 8000
MAX_DIGEST_CHARS = 36

_SECRET_WORDS = {
    "key", "apikey", "accesskey", "secretkey", "privatekey", "token", "secret", "password", "passwd",
    "credential", "credentials", "auth", "authorization", "bearer", "cookie",
}
# A name ending in one of these points at a secret (an env var, a file) rather than holding it.
_POINTER_WORDS = {"env", "envvar", "var", "path", "file", "dir", "sock", "socket", "url", "name", "type"}


def is_secret_name(name: str) -> bool:
    """Whether a (dotted) parameter name looks like it holds a secret.

    The last component is split into words (``api_key``, ``hfToken``): a word such as key, token,
    secret or password marks a secret, unless the name ends in ``_env`` (it names the environment
    variable that holds the secret, e.g. ``teacher.api_key_env``; likewise ``_path``, ``_file``...).
    ``tokens_per_min`` is not a secret.
    """
    leaf = name.rsplit(".", 1)[-1]
    leaf = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", leaf).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", leaf) if w]
    if not words or words[-1] in _POINTER_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words)


def _secret_values(params: Mapping[str, Any]) -> set[str]:
    """Values of environment variables that hold secrets: named by a ``*_env`` param or named like one."""
    values: set[str] = set()
    env = environ.snapshot()  # library threads change os.environ while we read it (issue 18)
    for key, value in params.items():
        if key.lower().endswith("_env") and isinstance(value, str) and env.get(value):
            values.add(env[value])
    for name, value in env.items():
        if is_secret_name(name.replace("__", ".")) and len(value) >= 8:
            values.add(value)
    return {v for v in values if len(v) >= 6}


def scrub_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop secrets: (kept params, dropped names).

    Dropped: a name that looks like a secret (:func:`is_secret_name`) with a value other than None,
    and any value containing the value of a secret environment variable.
    """
    secrets = _secret_values(params)
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in params.items():
        text = "" if value is None else str(value)
        if (value is not None and is_secret_name(key)) or any(s in text for s in secrets):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def clean_key(name: str) -> str:
    """A metric/param name MLflow accepts: bad characters become ``_``, no ``..`` or leading ``/``."""
    key = re.sub(r"[^/\w.\- :]", "_", str(name))
    key = re.sub(r"/+", "/", key).strip("/")
    key = "/".join(p if p not in (".", "..") else "_" for p in key.split("/"))
    return (key or "_")[:MAX_KEY_CHARS]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A parameter value as MLflow stores it: lists and dicts as JSON, credentials redacted, cut to its limit."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return _cut(redact_url_credentials(text), MAX_PARAM_VALUE_CHARS)


def metric_value(value: Any) -> float | None:
    """A metric as a float (bools, numpy/torch scalars included); None for anything that is not a number."""
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def tag_value(value: Any) -> str:
    """A tag value: credentials redacted, cut to MLflow's limit."""
    return _cut(redact_url_credentials(str(value)), MAX_TAG_VALUE_CHARS)


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An error as one line for a message: whitespace collapsed, credentials redacted, at most ``limit`` chars."""
    return _cut(redact_url_credentials(" ".join(str(exc).split())) or type(exc).__name__, limit)
