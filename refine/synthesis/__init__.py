"""The synthesis stage: every synthesis program run over many items into a resumable run directory.

* `runner`: `SynthConfig`, the item plans (personas, environment episodes), `run_synth` and the manifest totals;
* `item_work`: `SynthWork`, the per-item work and its one record writer (retries, usage, verdicts);
* `persona_loading`: the built-in persona set and persona files.

`refine.synth` and `refine.personas` are the same modules under their old names. Public names load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SynthConfig": "refine.synthesis.runner",
    "plan_env_items": "refine.synthesis.runner",
    "plan_items": "refine.synthesis.runner",
    "run_synth": "refine.synthesis.runner",
    "synth_totals": "refine.synthesis.runner",
    "SynthWork": "refine.synthesis.item_work",
    "TransientLMError": "refine.synthesis.item_work",
    "is_transient": "refine.synthesis.item_work",
    "builtin_personas": "refine.synthesis.persona_loading",
    "load_personas": "refine.synthesis.persona_loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'refine.synthesis' has no attribute {name!r}")
