"""Padding-free attention for packed batches without flash-attn: PyTorch's varlen kernel, or per-document SDPA.

TRL's padding-free collator flattens a batch into one row and passes ``position_ids`` plus the document boundaries
``cu_seq_lens_q/k`` and ``max_length_q/k``. Transformers uses those boundaries only in its flash-attention path (the
flash-attn package, not installed on our machines); with SDPA it builds a dense block-diagonal mask over the whole
row instead (quadratic in the row length). This module registers an attention implementation, ``refine_varlen``,
that reads the boundaries and runs causal attention per document: through ``torch.nn.attention.varlen.varlen_attn``
(FlashAttention kernels shipped with PyTorch >= 2.10) on CUDA, else one causal SDPA call per document. Without the
boundaries (ordinary padded batches, generation) it defers to the SDPA implementation, so a model can keep this
setting outside training.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any

__all__ = ["VARLEN_ATTENTION", "register_varlen_attention", "varlen_kernel_available"]

logger = logging.getLogger(__name__)

VARLEN_ATTENTION = "refine_varlen"
_REGISTERED = False


def _torch_varlen() -> Any | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_kernel_available() -> bool:
    """True when PyTorch's varlen FlashAttention kernel can run here (CUDA + torch >= 2.10)."""
    import torch

    return torch.cuda.is_available() and _torch_varlen() is not None


_PARAMS: dict[str, frozenset[str]] = {}


def _varlen_params(fn: Any) -> frozenset[str]:
    # The keyword set differs between torch 2.10/2.11 and later; inspected once, at registration (not under dynamo).
    if "varlen" not in _PARAMS:
        _PARAMS["varlen"] = frozenset(inspect.signature(fn).parameters)
    return _PARAMS["varlen"]


def _call_varlen(fn: Any, q: Any, k: Any, v: Any, cu: Any, max_len: int, scale: float | None) -> Any:
    params = _varlen_params(fn)
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    # (1, heads, tokens, dim) -> (tokens, heads, dim)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    cu = cu.to(device=q.device, dtype=torch.int32)
    fn = _torch_varlen()
    if q.is_cuda and fn is not None and q.dtype in (torch.bfloat16, torch.float16):
        max_len = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
        out = _call_varlen(fn, q, k, v, cu, max_len, scaling)
    else:
        bounds = cu.tolist()
        rep = q.shape[1] // k.shape[1]
        parts = []
        for s, e in itertools.pairwise(bounds):
            if e <= s:
                continue
            qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
            if rep > 1:
                ks, vs = ks.repeat_interleave(rep, dim=0), vs.repeat_interleave(rep, dim=0)
            parts.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling).transpose(0, 1))
        out = torch.cat(parts, dim=0)
        if out.shape[0] < q.shape[0]:  # trailing padding (pad_to_multiple_of) attends to nothing
            out = torch.cat([out, out.new_zeros(q.shape[0] - out.shape[0], *out.shape[1:])], dim=0)
    return out.unsqueeze(0), None  # (1, tokens, heads, dim), as the other implementations return


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    # Document boundaries come from cu_seq_lens; a dense mask would cost O(tokens^2) memory for nothing.
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None and not bool(attention_mask.all()):
        from transformers.masking_utils import sdpa_mask

        return sdpa_mask(*args, **kwargs)
    return None


def register_varlen_attention() -> str:
    """Register the ``refine_varlen`` attention implementation with transformers (idempotent) and return its name.

    Use it as ``model.set_attn_implementation(name)`` or ``from_pretrained(..., attn_implementation=name)``.
    """
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        fn = _torch_varlen()
        if fn is not None:
            _varlen_params(fn)
        AttentionInterface.register(VARLEN_ATTENTION, _varlen_attention_forward)
        AttentionMaskInterface.register(VARLEN_ATTENTION, _varlen_mask)
        _REGISTERED = True
    return VARLEN_ATTENTION
