"""Resuming an evaluation run made by an older version: the config its manifest stores may lack fields added since.

`RunStore` refuses to resume a run whose stored config differs from the new one. A run made before `EvalConfig`
gained `suite`, `annotations` and `decoding` stores none of them, so every resume of it failed with "its config
differs in ['annotations', 'decoding', 'suite']". `resume_config` fills the gap: a field the stored config lacks
is left out of the comparison when the new value is the one the old run must have had (its default: the `refine`
suite, no annotations), or when the old run could not record it (`decoding`); any other new value still differs
and is refused, naming the field.

Example:
    >>> from refine.eval.config import EvalConfig
    >>> old = EvalConfig(envs=["toy"]).model_dump(exclude={"suite", "annotations", "decoding"})
    >>> resume_config(EvalConfig(envs=["toy"], decoding={"temperature": 0}).model_dump(), old) == old
    True
    >>> resume_config(EvalConfig(envs=["toy"], suite="agentboard").model_dump(), old)["suite"]
    'agentboard'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["UNRECORDED_FIELDS", "resume_config", "stored_config"]

#: Fields an older run could not record: any new value is accepted when the stored config lacks them.
UNRECORDED_FIELDS = ("decoding",)


def stored_config(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The config in `out/manifest.json`, or None (no run there yet, or a manifest `RunStore` will judge itself)."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = manifest.get("config") if isinstance(manifest, dict) else None
    return config if isinstance(config, dict) else None


def resume_config(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config to compare with the stored one `old` on resume: `new` without the fields `old` predates."""
    from refine.eval.config import EvalConfig

    if old is None:
        return dict(new)
    fields = EvalConfig.model_fields
    out = {}
    for key, value in new.items():
        if key not in old and key in fields:
            if key in UNRECORDED_FIELDS or value == fields[key].get_default(call_default_factory=True):
                continue
        out[key] = value
    return out
