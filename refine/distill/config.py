"""Typed settings of a distillation run, shared by the Python API, the CLI and the `dspy.Provider`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ABLATIONS", "DistillConfig", "activation_bytes"]

ABLATIONS = ("masked", "trained", "no-refine")
_CPU_ACTIVATION_MB = 4096  # default budget of one micro-batch's saved activations on CPU without checkpointing


def activation_bytes(tokens: int, model_config: Any) -> int:
    """Estimated float32 memory of the activations a decoder-only model keeps for the backward pass of one
    micro-batch of `tokens` tokens without checkpointing: per layer and token about 12 hidden-size and 5
    intermediate-size vectors (norm inputs and outputs, q/k/v, attention output, residuals, the MLP's gate, up and
    product), plus about 3 vocabulary-size vectors for the logits and their gradient.

    Example:
        >>> from types import SimpleNamespace
        >>> smollm2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
        >>> round(activation_bytes(1000, smollm2) / 2**20)  # MiB
        2232
    """
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    inter = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    return 4 * tokens * (layers * (12 * hidden + 5 * inter) + 3 * vocab)


class DistillConfig(BaseModel):
    """How to distill turn-masked trajectories into a student model.

    Example:
        >>> cfg = DistillConfig(out="runs/student", lora=True, max_steps=50)
        >>> cfg.resolved_learning_rate()
        0.0002
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    out: Path = Field(description="Output folder of the student checkpoint, model card and loss curve.")
    base: str | None = Field(
        default=None, description="Base model: a local HF folder or hub id. None = the embedded SmolLM2-135M-Instruct."
    )
    ablation: Literal["masked", "trained", "no-refine"] = Field(
        default="masked",
        description="masked: erroneous turns stay in context without loss (the paper); trained: they are trained; "
        "no-refine: refinement episodes (error turn + its feedback) are dropped.",
    )
    lora: bool = Field(default=False, description="Train LoRA adapters (PEFT) instead of all weights.")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = Field(default="all-linear")
    merge_lora: bool = Field(default=False, description="Save LoRA merged into a plain checkpoint (else adapter).")
    max_steps: int = Field(default=-1, description="Optimizer steps; -1 = run `epochs` epochs.")
    epochs: float = Field(default=3.0, gt=0)
    learning_rate: float | None = Field(default=None, gt=0, description="None = 2e-5 (full) or 2e-4 (LoRA).")
    batch_size: int = Field(default=8, ge=1, description="Sequences per device per micro-batch.")
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=2048, ge=8, description="Tokens kept per trajectory (the start is kept).")
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    seed: int = 0
    bf16: bool | Literal["auto"] = Field(default="auto", description="auto = on CUDA with bf16 support.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        default="auto",
        description="Recompute activations (less memory, slower: 16% on 2 CPU cores, ~13% on an H200). "
        "auto = on with CUDA; on CPU off while one micro-batch's activations fit in $REFINE_DISTILL_CPU_ACT_MB "
        "(default 4096) by estimate (`activation_bytes`).",
    )
    padding_free: bool | Literal["auto"] = Field(
        default="auto",
        description="Flatten each micro-batch into one row with per-document positions and varlen attention "
        "(no padding compute). auto = on CUDA.",
    )
    packing: bool = Field(
        default=False,
        description="Pack trajectories into rows of max_length tokens (best-fit decreasing, never split); "
        "batch_size then counts packed rows. Implies padding-free attention.",
    )
    optim: str = Field(default="auto", description="auto = adamw_torch_fused on CUDA, adamw_torch elsewhere.")
    torch_compile: bool = Field(default=False, description="Compile the model with torch.compile (GPU; slow start).")
    liger_kernel: bool | Literal["auto"] = Field(
        default="auto",
        description="Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU (the LM head is fused by TRL already). "
        "auto = on CUDA when the liger-kernel package is installed.",
    )
    token_metrics: bool = Field(
        default=False,
        description="Log TRL's per-token entropy and accuracy. Off: the fused LM head computes the loss alone, with no "
        "host sync per micro-batch (+9% tokens/s for the 1B shape on an H200); the loss is the same.",
    )
    logging_steps: int = Field(default=1, ge=1)
    save_loss_curve: bool = True

    def resolved_checkpointing(self, *, cuda: bool, micro_tokens: int, model_config: Any) -> bool:
        """Whether to recompute activations: the setting, or for `auto` on CUDA yes, on CPU only when one
        micro-batch of `micro_tokens` tokens would keep more than the activation budget (see `activation_bytes`).

        Raises:
            ValueError: when `$REFINE_DISTILL_CPU_ACT_MB` is not a number.
        """
        if self.gradient_checkpointing != "auto":
            return bool(self.gradient_checkpointing)
        if cuda:
            return True
        raw = os.environ.get("REFINE_DISTILL_CPU_ACT_MB", str(_CPU_ACTIVATION_MB))
        try:
            budget = float(raw) * 2**20
        except ValueError:
            raise ValueError(f"REFINE_DISTILL_CPU_ACT_MB must be a number of MiB, got {raw!r}") from None
        return activation_bytes(micro_tokens, model_config) > budget

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora else 2e-5
