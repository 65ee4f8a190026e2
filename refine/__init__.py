"""dspy-refine: refinement tuning (AgentRefine) for LLM agents as declarative DSPy programs.

Public names are imported lazily so that `import refine` (and the `refine` CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActionSpec": "refine.data",
    "Provenance": "refine.data",
    "Script": "refine.data",
    "Trajectory": "refine.data",
    "Turn": "refine.data",
    "Verdict": "refine.data",
    "RefineError": "refine.errors",
    "GraphModule": "refine.graph",
    "ProgramGraph": "refine.graph",
    "RunStore": "refine.store",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'refine' has no attribute {name!r}")
