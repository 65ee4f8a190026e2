"""Quantized linear layers for the in-process engine's CPU models (`quantize=` of the engine, `$REFINE_LM_QUANT`).

Decoding one sequence reads every weight once per token, so on a small CPU it is bound by memory traffic and matmul
speed: SmolLM2-135M in float32 reads about 540 MB per token, where llama.cpp's Q4_1 file reads about 85 MB. Modes:

* `int8dyn`: int8 weights per output channel and activations quantized per call, through PyTorch's quantized engine
  (fbgemm / x86 with VNNI: `torch.ops.quantized.linear_dynamic`, the op of `torch.ao` dynamic quantization). The fast
  one on the 2-core AVX-512 box: 2.3-7.5x faster than float32 per matmul (1 and 16 rows). PyTorch 2.13 marks
  the quantized tensor types it needs as deprecated (the project pins torch 2.13.0);
* `int8`: weight-only int8 per output channel (`aten::_weight_int8pack_mm`, float32 activations);
* `int4`: weight-only int4 in groups of 32 input features (`aten::_weight_int4pack_mm_for_cpu`): the Q4_1 layout of
  the embedded model's GGUF file, whose dequantized weights it reproduces exactly; the output head stays int8.

`int8` and `int4` run PyTorch's weight-only CPU kernels; on this box (no AVX-512-BF16/AMX) they
ran 3.7-16x slower than float32 for one row, so calls with two rows or more use a float32 oneDNN copy of the weight
(`dense_rows`): they save no memory and are kept for machines where those kernels are fast. Measured numbers and the
agreement with float32: benchmarks/RESULTS.md, "Embedded engine vs llama.cpp".
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from refine.errors import LMError
from refine.lm.quant_modes import QUANT_MODES, resolve_quantize

__all__ = [
    "DENSE_ROWS",
    "GROUP_SIZE",
    "QUANT_MODES",
    "DynamicInt8Linear",
    "Int4Linear",
    "Int8Linear",
    "dense_rows_for",
    "quantize_linears",
    "resolve_quantize",
]

GROUP_SIZE = 32  # int4 group along the input features (Q4_1's block)
DENSE_ROWS = 2  # int8/int4: from this many rows the float32 oneDNN copy is used (their kernels are slower here)
_INT4_INNER_K_TILES = 1  # the CPU packing's inner_k_tiles argument, as torchao passes it


class _QuantLinear(torch.nn.Module):
    """Shared part of the quantized layers: the bias, the optional dense copy, reshaping to 2-D."""

    def __init__(self, linear: torch.nn.Linear, dense_rows: int | None) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.dense_rows = dense_rows
        packed = linear.weight.detach().to_mkldnn() if dense_rows is not None else None
        self.register_buffer("packed_weight", packed, persistent=False)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T + bias` with the quantized `W` (or its dense copy for `dense_rows` rows and more)."""
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if self.packed_weight is not None and flat.shape[0] >= self.dense_rows:
            out = torch.ops.aten.mkldnn_linear(flat.contiguous().to_mkldnn(), self.packed_weight, None).to_dense()
        else:
            out = self._mm(flat.contiguous())
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        dense = f", float32 oneDNN from {self.dense_rows} rows" if self.packed_weight is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{dense}"


class Int8Linear(_QuantLinear):
    """Inference-only linear with int8 weights, one float32 scale per output channel (`w = q * scale`).

    Args:
        linear: the float32 layer to quantize (its weight is not kept).
        dense_rows: keep a float32 oneDNN copy for inputs of at least this many rows (None: never).

    Example:
        >>> layer = torch.nn.Linear(64, 16)
        >>> x = torch.randn(3, 64)
        >>> with torch.inference_mode():
        ...     err = (Int8Linear(layer)(x) - layer(x)).abs().max().item()
        >>> err < 0.02
        True
    """

    def __init__(self, linear: torch.nn.Linear, dense_rows: int | None = None) -> None:
        super().__init__(linear, dense_rows)
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        q = (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", scales.contiguous())

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this layer multiplies by."""
        return self.qweight.float() * self.scales[:, None]


class Int4Linear(_QuantLinear):
    """Inference-only linear with int4 weights in groups of `GROUP_SIZE` input features, a float32 scale and minimum
    per group (`w = q * scale + min`, q in 0..15, as GGUF's Q4_1).

    Args:
        linear: the float32 layer to quantize; its input features must be a multiple of `GROUP_SIZE`.
        dense_rows: keep a float32 oneDNN copy for inputs of at least this many rows (None: never).

    Example:
        >>> layer = torch.nn.Linear(64, 16, bias=False)
        >>> x = torch.randn(3, 64)
        >>> with torch.inference_mode():
        ...     q = Int4Linear(layer)
        ...     err = (q(x) - x @ q.dequantized().T).abs().max().item()
        >>> err < 1e-4
        True
    """

    def __init__(self, linear: torch.nn.Linear, dense_rows: int | None = None) -> None:
        if linear.in_features % GROUP_SIZE:
            raise LMError(f"int4 needs input features divisible by {GROUP_SIZE}, got {linear.in_features}")
        super().__init__(linear, dense_rows)
        n, k = linear.out_features, linear.in_features
        groups = linear.weight.detach().float().reshape(n, k // GROUP_SIZE, GROUP_SIZE)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15.0).clamp(min=torch.finfo(torch.float32).tiny)
        q = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INT4_INNER_K_TILES)
        # The kernel computes (q - 8) * scale + zero, with [k / group, n, (scale, zero)] in the activations' dtype.
        zero = low + 8.0 * scale
        scales_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.qweight, GROUP_SIZE, self.scales_zeros)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this layer multiplies by (computed through the kernel on an identity matrix)."""
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return self._mm(eye).T.contiguous()


class DynamicInt8Linear(_QuantLinear):
    """Inference-only linear through PyTorch's quantized engine (fbgemm / x86): int8 weights per output channel,
    activations quantized per call (`torch.ops.quantized.linear_dynamic`, what `torch.ao` dynamic quantization runs).

    PyTorch 2.13 marks the quantized tensor types this needs as deprecated (to be removed in a later release), so
    this mode is for comparison; the weight-only layers above do not use them.

    Args:
        linear: the float32 layer to quantize (its weight is not kept).
        dense_rows: keep a float32 oneDNN copy for inputs of at least this many rows (None: never).
    """

    def __init__(self, linear: torch.nn.Linear, dense_rows: int | None = None) -> None:
        super().__init__(linear, dense_rows)
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny).double()
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice of quantized tensors, once per layer
            q = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)


def dense_rows_for(model: Any, mode: str = "int8") -> int | None:
    """Rows from which a quantized layer of `model` uses its float32 oneDNN copy: `$REFINE_QUANT_DENSE_ROWS` (0 for
    never), else never for `int8dyn` (faster than float32 at every batch size measured), else `DENSE_ROWS` where
    oneDNN linears are enabled for the model (`refine.lm.onednn.onednn_enabled`), else never."""
    from refine.lm.onednn import onednn_enabled

    raw = os.environ.get("REFINE_QUANT_DENSE_ROWS", "").strip()
    if raw:
        try:
            rows = int(raw)
        except ValueError:
            rows = -1
        if rows < 0:
            raise LMError(f"REFINE_QUANT_DENSE_ROWS must be a non-negative integer, got {raw!r}")
        return rows or None
    if mode == "int8dyn":
        return None
    return DENSE_ROWS if onednn_enabled(model) else None


def _linear_of(module: Any) -> torch.nn.Linear | None:
    """The float32 `nn.Linear` behind `module` (itself, or one wrapped by `refine.lm.onednn.OneDNNLinear`)."""
    from refine.lm.onednn import OneDNNLinear

    if type(module) is torch.nn.Linear:
        linear = module
    elif isinstance(module, OneDNNLinear):
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight, linear.bias = module.weight, module.bias
    else:
        return None
    return linear if linear.weight.dtype == torch.float32 and linear.weight.device.type == "cpu" else None


def quantize_linears(model: Any, mode: str, *, dense_rows: int | None = None) -> int:
    """Replace the float32 linears of an inference-only CPU `model` by quantized ones (in place).

    The output head is quantized as int8 in both modes (it is the largest single matrix, and often tied to the input
    embedding, which keeps its float32 weight for the lookup).

    Args:
        model: the model (eval mode, CPU, float32).
        mode: `int8`, `int4`, `int8dyn` (every linear, the head included, through `DynamicInt8Linear`), or `none`
            (nothing changes).
        dense_rows: keep a float32 oneDNN copy of each weight for inputs of at least this many rows (None: never).

    Returns:
        How many layers were replaced.

    Raises:
        LMError: for an unknown mode.
    """
    mode = resolve_quantize(mode)
    if mode == "none":
        return 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            linear = _linear_of(child)
            if linear is None:
                continue
            if mode == "int8dyn":
                layer: _QuantLinear = DynamicInt8Linear(linear, dense_rows)
            elif mode == "int4" and child is not head and linear.in_features % GROUP_SIZE == 0:
                layer = Int4Linear(linear, dense_rows)
            else:
                layer = Int8Linear(linear, dense_rows)
            setattr(parent, name, layer)
            swapped += 1
    return swapped
