"""Credentials inside URLs masked wherever a value is echoed: error lines, the saved config, logs."""

from __future__ import annotations

import re
from typing import Any

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def redact_url_credentials(text: str) -> str:
    """``https://user:pass@host`` -> ``https://user:***@host`` (endpoints and tracking URIs in logs)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_values(value: Any) -> Any:
    """Every string inside nested dicts/lists with :func:`redact_url_credentials` applied."""
    if isinstance(value, str):
        return redact_url_credentials(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_values(v) for v in value]
    return value
