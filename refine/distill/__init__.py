"""Distillation with TRL: turn-masked labels, full/LoRA training, and the student back as a DSPy LM.

The only package of dspy-refine that imports TRL (inside `refine.distill.trainer`, lazily). Public names load on
first use so that `import refine.distill` stays light:

    >>> from refine.distill import DistillConfig, distill          # doctest: +SKIP
    >>> res = distill("runs/synth", DistillConfig(out="runs/student", max_steps=100))  # doctest: +SKIP
    >>> lm = refine.lm.get_lm(res.model_string)                     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ABLATIONS": "refine.distill.config",
    "DistillConfig": "refine.distill.config",
    "DistillResult": "refine.distill.trainer",
    "IGNORE_INDEX": "refine.distill.labels",
    "TRLProvider": "refine.distill.provider",
    "TRLTrainingJob": "refine.distill.provider",
    "VARLEN_ATTENTION": "refine.distill.packed_attention",
    "apply_ablation": "refine.distill.training_rows",
    "build_labels": "refine.distill.labels",
    "distill": "refine.distill.trainer",
    "load_rows": "refine.distill.training_rows",
    "register_varlen_attention": "refine.distill.packed_attention",
    "render_mask": "refine.distill.labels",
    "trajectory_to_row": "refine.distill.training_rows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'refine.distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
