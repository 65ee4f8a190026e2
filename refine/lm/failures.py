"""Which LM failures end a whole run: a refused API key (HTTP 401/403) fails every later call the same way, so it is
neither retried as transient nor recorded as one rejected item after another; it becomes one `LMAuthError` whose
message names the variable to fix.

Example:
    >>> from dspy.utils.exceptions import LMAuthError as DSPyAuthError
    >>> err = auth_failure(DSPyAuthError("Incorrect API key provided", status=401, model="openai/gpt-4o-mini"))
    >>> str(err).split(":")[0]
    'The LM server refused the API key of openai/gpt-4o-mini (HTTP 401'
"""

from __future__ import annotations

import os
import re
from typing import Any

from refine.errors import LMAuthError

__all__ = ["AUTH_STATUSES", "KEY_ENV_VAR", "auth_failure", "raise_if_auth_failure"]

AUTH_STATUSES = (401, 403)
#: Where commands that hand `--api-key-env NAME` on as OPENAI_API_KEY (optimize, quickstart) note NAME, so a refused
#: key is blamed on the variable the user set. An LM built with `api_key_env=` carries it as `lm.api_key_env`.
KEY_ENV_VAR = "REFINE_API_KEY_ENV"
# DSPy's, LiteLLM's and the OpenAI client's names for a refused key (PermissionDenied is HTTP 403).
_AUTH_NAMES = frozenset({"AuthenticationError", "LMAuthError", "PermissionDeniedError"})


def _status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def auth_failure(exc: BaseException, lm: Any = None) -> LMAuthError | None:
    """The run-ending `LMAuthError` for `exc` when it is a refused key (401/403), else None.

    `lm` (the LM that failed, if known) names the model and its server in the message.
    """
    if isinstance(exc, LMAuthError):
        return exc
    status = _status(exc)
    named = any(c.__name__ in _AUTH_NAMES for c in type(exc).__mro__)
    if status not in AUTH_STATUSES and not (named and status is None):
        return None
    from refine.redaction import scrub_secrets

    model = str(getattr(lm, "model", None) or getattr(exc, "model", None) or "the LM")
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    api_base = (getattr(lm, "kwargs", None) or {}).get("api_base")
    where = f" at {api_base}" if api_base else ""
    # The provider's first line only (DSPy appends a "To fix" block), with any echoed key scrubbed.
    detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    # Without the wrappers' prefixes ("[model] ", "litellm.AuthenticationError: ", "OpenAIException - ").
    detail = re.sub(r"^(\[[^\]]*\]\s*|(litellm\.)?\w+Error:\s*|\w+Exception - )+", "", detail)
    detail = scrub_secrets(detail)[:200]
    code = f"HTTP {status}" if status else type(exc).__name__
    # The variable the key came from, when the user named one (--api-key-env / api_key_env=): fix that one.
    key_env = getattr(lm, "api_key_env", None) or os.environ.get(KEY_ENV_VAR)
    fix = (
        f"set the right key in {key_env} (the variable --api-key-env names)"
        if key_env
        else f"set the right key in {provider.upper()}_API_KEY (or pass --api-key-env NAME for the variable that "
        "holds it)"
    )
    return LMAuthError(
        f"The LM server{where} refused the API key of {model} ({code}: {detail}): {fix}, then rerun with "
        "--resume; the items already made are kept."
    )


def raise_if_auth_failure(exc: BaseException, lm: Any = None) -> None:
    """Raise the run-ending `LMAuthError` (from `exc`) when `exc` is a refused key; otherwise return."""
    failure = auth_failure(exc, lm)
    if failure is not None:
        raise failure from (None if failure is exc else exc)
