"""oneDNN linear layers for the in-process engine's CPU models: weights pre-packed once, no MKL sgemm per call.

PyTorch runs a float32 `nn.Linear` on CPU through MKL's sgemm, which re-reads the weight in its plain layout at every
call and, on AMD CPUs, does not pick its fastest kernels. The engine's models only ever run inference, so the loader
swaps each `nn.Linear` for `OneDNNLinear`: the weight is reordered once into oneDNN's blocked layout and every call goes
through `aten::mkldnn_linear` (the op behind `torch.utils.mkldnn`, without its deprecated TorchScript wrapper).
Measured on the 2-core EPYC box (SmolLM2-135M, float32): prefill 1.8x faster, a decoding step 15% (1 row) to 21%
(16 rows) faster; greedy outputs unchanged (benchmarks/RESULTS.md). `REFINE_ONEDNN=0` turns it off.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["OneDNNLinear", "onednn_enabled", "use_onednn_linears"]


class OneDNNLinear(torch.nn.Module):
    """Inference-only replacement for a float32 `nn.Linear`, its weight pre-packed for oneDNN.

    The packed weight is a buffer outside the state dict: a model converted this way is for inference, not for saving
    or training (autograd does not run through oneDNN tensors).

    Args:
        linear: the layer to replace (its weight is copied; the layer itself is not changed).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", weight.to_mkldnn(), persistent=False)
        bias = linear.bias.detach().to_mkldnn() if linear.bias is not None else None
        self.register_buffer("packed_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ weight.T + bias`, like the `nn.Linear` it replaces."""
        out = torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.packed_weight, self.packed_bias)
        return out.to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def onednn_enabled(model: Any) -> bool:
    """Whether `model`'s linears can and should run through oneDNN: a float32 model on CPU, PyTorch built with
    oneDNN, and `REFINE_ONEDNN` not `0`."""
    if os.environ.get("REFINE_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu" and first.dtype == torch.float32


def use_onednn_linears(model: Any) -> int:
    """Swap every float32 `nn.Linear` of an inference-only CPU `model` for a `OneDNNLinear` (in place).

    Returns:
        how many layers were swapped (0 when `onednn_enabled(model)` is false).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> x = torch.randn(5, 4)
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
