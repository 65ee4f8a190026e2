"""oneDNN linear layers for the in-process engine's CPU models: faster matmuls from two rows up.

PyTorch runs a float32 `nn.Linear` on CPU through MKL's sgemm, which on AMD CPUs does not pick its fastest kernels.
The engine's models only run inference, so the loader wraps each `nn.Linear` in `OneDNNLinear`: the weight is also
kept as a oneDNN tensor, and calls with at least `MIN_ROWS` rows (prefill, batched decoding) go through
`aten::mkldnn_linear` (the op behind `torch.utils.mkldnn`, without its deprecated TorchScript wrapper). One-row calls
(decoding a single sequence) keep MKL, which is faster there.

Measured on the 2-core EPYC box from the engine's compute thread (`refine.lm.compute`), SmolLM2-135M: prefill 804 ->
1,210 tokens/s, a decoding step for 16 rows 88 -> 64 ms, for one row unchanged (39.7 vs 38.2 ms); greedy outputs
unchanged. The oneDNN copy doubles the linears' memory, so models whose linear weights exceed `REFINE_ONEDNN_MAX_MB`
(default 2048) are left alone; `REFINE_ONEDNN=0` turns it off, `=1` forces it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["MIN_ROWS", "OneDNNLinear", "onednn_enabled", "use_onednn_linears"]

MIN_ROWS = 2  # one row (decoding a single sequence) stays on MKL


class OneDNNLinear(torch.nn.Module):
    """Inference wrapper of a float32 `nn.Linear`: the same `weight`/`bias` parameters (so the state dict is
    unchanged), plus a oneDNN copy of the weight, used for inputs of at least `MIN_ROWS` rows.

    Autograd does not run through oneDNN tensors: this is for inference only.

    Args:
        linear: the layer to wrap (its parameters are shared, not copied).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer("packed_weight", linear.weight.detach().to_mkldnn(), persistent=False)
        bias = linear.bias.detach().to_mkldnn() if linear.bias is not None else None
        self.register_buffer("packed_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ weight.T + bias`, like the `nn.Linear` it wraps."""
        if x.numel() < MIN_ROWS * self.in_features:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        out = torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.packed_weight, self.packed_bias)
        return out.to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN from {MIN_ROWS} rows"


def onednn_enabled(model: Any) -> bool:
    """Whether `model`'s linears should be wrapped: a float32 model on CPU, PyTorch built with oneDNN, linear weights
    within `REFINE_ONEDNN_MAX_MB` (the packed copy doubles them), unless `REFINE_ONEDNN` says `0` (or `1`: always)."""
    setting = os.environ.get("REFINE_ONEDNN", "").strip().lower()
    if setting in ("0", "false", "no", "off") or not torch.backends.mkldnn.is_available():
        return False
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    limit = float(os.environ.get("REFINE_ONEDNN_MAX_MB", "2048")) * 2**20
    size = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    return size <= limit


def use_onednn_linears(model: Any) -> int:
    """Wrap every float32 `nn.Linear` of an inference-only CPU `model` in a `OneDNNLinear` (in place).

    Returns:
        how many layers were wrapped (0 when `onednn_enabled(model)` is false).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> x = torch.randn(2, MIN_ROWS, 4)
        >>> with torch.inference_mode():
        ...     before = net(x)
        ...     swapped = use_onednn_linears(net)
        ...     after = net(x)
        >>> swapped, torch.allclose(before, after, atol=1e-5)
        (2, True)
    """
    if not onednn_enabled(model):
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32:
                setattr(parent, name, OneDNNLinear(child))
                swapped += 1
    return swapped
