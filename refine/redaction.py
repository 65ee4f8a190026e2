"""Secrets out of every record, manifest and log: scrub known secret values, redact secret-looking config keys.

A secret is the value of a secret-looking environment variable (...KEY, ...TOKEN, ...SECRET), a value under a
secret-looking config key (api_key, token, ...), or anything passed to `register_secret`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["redact", "register_config_secrets", "register_secret", "scrub_secrets", "secret_values"]

# Whole name parts only: `max_tokens` / `prompt_tokens` are settings and usage counts, not secrets.
_SECRET_KEY = re.compile(
    r"(^|[_-])(api[_-]?key|(secret|access|private)[_-]?key|secret|token|password|passwd|passphrase|auth"
    r"|authorization|bearer|credentials?)$",
    re.I,
)
_SECRET_ENV = re.compile(r"(^|_)(KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)
_REGISTERED: set[str] = set()
_REGISTERED_LOCK = threading.Lock()


def register_secret(value: Any) -> None:
    """Scrub `value` (an API key given in code or config, not only in the environment) from every record and log."""
    if isinstance(value, str) and len(value) >= 8:
        with _REGISTERED_LOCK:
            _REGISTERED.add(value)


def secret_values() -> list[str]:
    """Values of secret-looking environment variables (8 characters or more), longest first."""
    return sorted(
        (v for k, v in os.environ.items() if _SECRET_ENV.search(k) and v and len(v) >= 8), key=len, reverse=True
    )


def scrub_secrets(text: str, secrets: list[str] | None = None) -> str:
    """Replace every secret found in `text`: values of secret-looking environment variables (…KEY, …TOKEN, …SECRET)
    and every value passed to `register_secret` (keys given in code or config)."""
    with _REGISTERED_LOCK:
        registered = list(_REGISTERED)
    for s in sorted({*(secret_values() if secrets is None else secrets), *registered}, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return text


def register_config_secrets(obj: Any) -> None:
    """Register the values under secret-looking keys of a config (they are redacted there, and scrubbed elsewhere)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if _SECRET_KEY.search(str(k)) and isinstance(v, str):
                register_secret(v)
            else:
                register_config_secrets(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            register_config_secrets(v)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like config with secret-looking keys (api_key, token, ...) replaced by '***'."""
    if isinstance(obj, Mapping):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj
