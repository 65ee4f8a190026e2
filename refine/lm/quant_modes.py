"""The quantization modes of the in-process LM (`quantize=` / `$REFINE_LM_QUANT`), without importing torch.

Both the loader (which checks the mode before loading) and `refine.lm.quantize` (which applies it) read them here.

Example:
    >>> resolve_quantize("off")
    'none'
"""

from __future__ import annotations

import os

from refine.errors import LMError

__all__ = ["QUANT_MODES", "resolve_quantize"]

#: Weight-only quantization modes of the in-process engine's linears (`refine.lm.quantize`).
QUANT_MODES = ("none", "int8", "int4", "int8dyn")


def resolve_quantize(mode: str | None) -> str:
    """The quantization mode to use: `mode`, else `$REFINE_LM_QUANT`, else `none`.

    Raises:
        LMError: for an unknown mode.
    """
    value = (mode or os.environ.get("REFINE_LM_QUANT") or "none").strip().lower()
    if value in ("0", "off", "false", "no", "fp32", "float32"):
        value = "none"
    if value not in QUANT_MODES:
        raise LMError(f"Unknown quantize mode {value!r} for the in-process LM; use one of {', '.join(QUANT_MODES)}")
    return value
