"""Attention for the in-process engine's padded batches: SDPA over the key columns each group of rows really uses.

The engine batches rows of different lengths right-aligned in one KV cache (`refine.lm.engine`), and decodes into a
`StaticCache` whose tail is still empty. Transformers' SDPA path attends over the whole cache width for every row and,
with a padding mask and grouped-query heads, copies the keys and values once per query head group (`repeat_kv`).
This module registers ``refine_sdpa``, which computes the same attention with two changes:

* the rows are split into a few contiguous groups, and each group attends only over the columns from its earliest
  unmasked key to the batch's last one (the engine orders rows by length, so groups are tight); the skipped columns
  are masked for every row of the group, so the result is unchanged;
* grouped-query heads use SDPA's ``enable_gqa`` instead of copying keys and values (2.4x faster on 2 CPU cores for
  16 rows of 49 new tokens over 1,000 cached ones).

Anything else (no mask, dropout, a position bias, soft-capping) goes to transformers' own SDPA implementation.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

__all__ = ["TRIMMED_ATTENTION", "plan_groups", "register_trimmed_attention"]

TRIMMED_ATTENTION = "refine_sdpa"
_REGISTERED = False
_CALL_COST = 256  # one extra SDPA call costs about as much as attending over this many (row, column) pairs
_MAX_GROUPS = 4
_plans = threading.local()  # per thread: (mask, plan) of the last mask seen; every layer of a forward shares it


def plan_groups(starts: list[int], end: int) -> list[tuple[int, int, int]]:
    """Split rows `0..n-1` (first used key column `starts[i]`, all ending at `end`) into contiguous groups.

    Returns `(first row, last row + 1, first column)` per group, choosing among 1, 2 or 4 equal groups the split
    that attends over the fewest (row, column) pairs, counting `_CALL_COST` pairs per extra call.

    Example:
        >>> plan_groups([0, 0, 500, 520], 1000)
        [(0, 2, 0), (2, 4, 500)]
        >>> plan_groups([0, 10, 20, 30], 1000)
        [(0, 4, 0)]
    """
    rows = len(starts)
    best: list[tuple[int, int, int]] = []
    best_cost = None
    for count in (1, 2, _MAX_GROUPS):
        if count > rows:
            break
        bounds = [round(i * rows / count) for i in range(count + 1)]
        groups = [(a, b, min(starts[a:b])) for a, b in itertools.pairwise(bounds) if b > a]
        cost = sum((b - a) * (end - s) for a, b, s in groups) + _CALL_COST * len(groups)
        if best_cost is None or cost < best_cost:
            best, best_cost = groups, cost
    return best


def _plan(mask: Any) -> tuple[int, list[tuple[int, int, int]]]:
    """`(end, groups)` for a boolean SDPA mask `[rows, 1, queries, columns]` (True = attend), cached per mask."""
    cached = getattr(_plans, "last", None)
    if cached is not None and cached[0] is mask:
        return cached[1]
    used = mask.any(dim=2)[:, 0]  # [rows, columns]
    columns = used.shape[-1]
    any_row = used.any(dim=0)
    end = columns - int(any_row.flip(0).int().argmax()) if bool(any_row.any()) else columns
    starts = used.int().argmax(dim=-1).tolist()  # first used column (0 for a row that uses none)
    plan = (end, plan_groups(starts, end))
    _plans.last = (mask, plan)
    return plan


def _trimmed_sdpa_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        attention_mask is None
        or attention_mask.dtype != torch.bool
        or attention_mask.shape[1] != 1
        or attention_mask.shape[0] != query.shape[0]  # a mask broadcast over rows: nothing to group
        or dropout
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or query.shape[-1] != value.shape[-1]
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    end, groups = _plan(attention_mask)
    gqa = key.shape[1] != query.shape[1]
    outputs = []
    for first, last, start in groups:
        outputs.append(
            F.scaled_dot_product_attention(
                query[first:last],
                key[first:last, :, start:end],
                value[first:last, :, start:end],
                attn_mask=attention_mask[first:last, :, :, start:end],
                scale=scaling,
                enable_gqa=gqa,
            )
        )
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out.transpose(1, 2).contiguous(), None


def register_trimmed_attention() -> str:
    """Register the ``refine_sdpa`` attention implementation with transformers (idempotent) and return its name.

    Use it as ``model.set_attn_implementation(name)``; its masks are SDPA's.
    """
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(TRIMMED_ATTENTION, _trimmed_sdpa_forward)
        AttentionMaskInterface.register(TRIMMED_ATTENTION, sdpa_mask)
        _REGISTERED = True
    return TRIMMED_ATTENTION
