"""The TRL adapter: every `trl` call of dspy-refine lives here (SFTTrainer/SFTConfig, TRL >= 1.16).

`distill(data, config)` turns training rows into turn-masked ``input_ids``/``labels`` (`build_labels`), trains the
base model fully or with LoRA, and writes a Hugging Face checkpoint folder with a model card and a loss curve.
On CUDA it trains padding-free: each micro-batch is one flat row with per-document position ids, and attention runs
per document (`distill.packed_attention`), so packed trajectories never attend across boundaries and no compute is
spent on padding. The same function runs under ``accelerate launch`` (FSDP/DeepSpeed configs in examples/accelerate).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from refine.distill.config import DistillConfig
from refine.distill.labels import IGNORE_INDEX, build_labels, fit_length
from refine.errors import TrainingError

__all__ = [
    "MIN_TRL",
    "DistillResult",
    "distill",
    "liger_kernel_available",
    "load_base",
    "make_trainer",
    "resolve_base",
    "sft_config_kwargs",
    "tokenize_rows",
    "use_liger_kernel",
]

logger = logging.getLogger(__name__)

MIN_TRL = (1, 16)
ProgressFn = Callable[[int, int, Mapping[str, float]], None]


class DistillResult(BaseModel):
    """What a distillation run produced."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    out: Path
    model_string: str
    steps: int
    losses: list[float]
    stats: dict[str, Any]
    loss_curve: Path | None = None


def _require_trl() -> Any:
    try:
        import trl
    except ImportError as exc:
        raise TrainingError("distillation needs the train extra: pip install 'dspy-refine[train]'") from exc
    version = tuple(int(p) for p in trl.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRL:
        raise TrainingError(f"trl {trl.__version__} is too old; dspy-refine needs trl>=1.16 (pip install -U trl)")
    return trl


def resolve_base(base: str | None) -> str:
    """The base model path: the given folder/hub id, or the embedded SmolLM2-135M-Instruct folder."""
    if base:
        return str(Path(base).expanduser()) if Path(base).expanduser().exists() else base
    from refine.lm.embedded import embedded_model_dir

    return str(embedded_model_dir())


def tokenize_rows(
    tokenizer: Any, rows: Iterable[Mapping[str, Any]], max_length: int, cap: int | None = None
) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
    """`build_labels` over rows, fitted to ``max_length`` by `fit_length` (a trained token is never cut: such a
    row is kept whole up to ``cap`` tokens, or refused); drops rows with no trained token; returns the statistics."""
    examples, dropped, refused = [], [], []
    tokens = trained = truncated = kept_whole = 0
    for r in rows:
        ex, status = fit_length(build_labels(tokenizer, r["messages"]), max_length, cap)
        if ex is None:
            refused.append({"id": r.get("id"), "reason": status})
            continue
        truncated += status == "truncated"
        kept_whole += status == "kept_whole"
        n_trained = sum(1 for lab in ex["labels"] if lab != IGNORE_INDEX)
        if n_trained == 0:
            dropped.append(r.get("id"))
            continue
        examples.append(ex)
        tokens += len(ex["input_ids"])
        trained += n_trained
    stats = {
        "examples": len(examples),
        "dropped_no_trained_tokens": len(dropped),
        "truncated": truncated,
        "kept_whole_over_max_length": kept_whole,
        "refused_too_long": refused,
        "max_length_requested": max_length,
        "max_length": max([max_length, *(len(e["input_ids"]) for e in examples)]),
        "tokens": tokens,
        "trained_tokens": trained,
        "masked_fraction": round(1 - trained / tokens, 4) if tokens else None,
    }
    if not examples:
        raise TrainingError(
            "no training row has a trained token (every assistant turn has loss=false, or every row is longer "
            f"than the model's context: {refused[:2]}); check the data"
        )
    return examples, stats


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def sft_config_kwargs(cfg: DistillConfig, *, cuda: bool, bf16: bool, padding_free: bool) -> dict[str, Any]:
    """Translate a `DistillConfig` into `SFTConfig` keyword arguments for the installed TRL/transformers.

    This is the one place that knows argument renames (``max_seq_length`` -> ``max_length``,
    ``gradient_checkpointing`` -> ``activation_checkpointing``, ``warmup_ratio`` -> ``warmup_steps``,
    ``use_cpu``/``no_cuda``).
    """
    from trl import SFTConfig

    names = _field_names(SFTConfig)
    kw: dict[str, Any] = {
        "output_dir": str(cfg.out),
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.resolved_learning_rate(),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": "cosine",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": cfg.seed,
        "bf16": bf16,
        "fp16": False,
        "disable_tqdm": True,
        # the progress display's tokens/s: the trainer counts the tokens (not padding) of every batch it trains on
        "include_num_input_tokens_seen": "non_padding",
        "padding_free": padding_free,
        "packing": False,
        # rows are tokenized and truncated by us; padding-free without packing requires max_length=None
        "max_length": None if padding_free else cfg.max_length,
        "dataset_kwargs": {"skip_prepare_dataset": False},
        "remove_unused_columns": False,
        "dataloader_drop_last": False,
        "torch_compile": cfg.torch_compile,
        "optim": cfg.optim if cfg.optim != "auto" else ("adamw_torch_fused" if cuda else "adamw_torch"),
        "use_liger_kernel": use_liger_kernel(cfg, cuda=cuda),
    }
    if cfg.packing:
        kw.update(packing=True, packing_strategy="bfd", padding_free=True, max_length=cfg.max_length)
    if "warmup_ratio" not in names and "warmup_steps" in names:
        # transformers >= 5.2x dropped warmup_ratio; a float below 1 in warmup_steps is the same ratio
        kw["warmup_steps"] = float(kw.pop("warmup_ratio"))
    if "max_length" not in names and "max_seq_length" in names:
        kw["max_seq_length"] = kw.pop("max_length")
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # `auto` is resolved by `distill()` from the data; called directly, auto means on with CUDA only
    checkpointing = cfg.gradient_checkpointing if isinstance(cfg.gradient_checkpointing, bool) else cuda
    kw[ckpt] = checkpointing
    if checkpointing:
        kw[f"{ckpt}_kwargs"] = {"use_reentrant": False}
    if not cuda:
        kw["use_cpu" if "use_cpu" in names else "no_cuda"] = True
    return {k: v for k, v in kw.items() if k in names}


def liger_kernel_available() -> bool:
    """True when the liger-kernel package is importable (its kernels need CUDA and Triton)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def use_liger_kernel(cfg: DistillConfig, *, cuda: bool) -> bool:
    """Whether to patch the model with Liger's kernels; an explicit True without the package or a GPU is an error."""
    if cfg.liger_kernel == "auto":
        return cuda and liger_kernel_available()
    if cfg.liger_kernel and not (cuda and liger_kernel_available()):
        raise TrainingError(
            "liger_kernel=True needs a CUDA GPU and the liger-kernel package: pip install liger-kernel "
            "(or leave it at auto)"
        )
    return bool(cfg.liger_kernel)


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_base(base: str, *, bf16: bool, padding_free: bool) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a local folder, offline-first; padding-free models get varlen attention."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refine.distill.packed_attention import register_varlen_attention

    try:
        tok = AutoTokenizer.from_pretrained(base)
        attn = register_varlen_attention() if padding_free else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation=attn
        )
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"cannot load base model {base!r}: {exc}. Pass --base with a local Hugging Face folder "
            "(config.json, weights, tokenizer) or omit it to use the embedded SmolLM2-135M-Instruct"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _progress_callback(fn: ProgressFn) -> Any:
    """A transformers `TrainerCallback` that reports ``fn(step, total, last_logs)`` after each optimizer step; the
    logs carry ``tokens_seen`` (non-padding input tokens trained on so far) once the trainer counts them."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        last: dict[str, float] = {}  # noqa: RUF012 - replaced per instance on the first log

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:  # a step's log comes after its on_step_end: report its loss now
                self.last = {k: v for k, v in logs.items() if isinstance(v, int | float)}
                self.on_step_end(args, state, control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seen = getattr(state, "num_input_tokens_seen", 0) or 0
            fn(state.global_step, state.max_steps, {**self.last, "tokens_seen": seen} if seen else self.last)

    return _Progress()


def _lean_trainer_class() -> type:
    """`SFTTrainer` whose training loss is TRL's fused LM head alone (log-probabilities of the labels).

    TRL's own `compute_loss` also computes each token's entropy and whether it is the top-1 token, and reads them back
    with `.item()` after every micro-batch for its logs; that host sync stalls the GPU queue. Here the training loss is
    the same sum of label log-probabilities over ``num_items_in_batch`` and nothing is read back; evaluation, custom
    losses, label smoothing and MoE auxiliary losses go through TRL's path unchanged.
    """
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lean_loss = (
                self.compute_loss_func is None
                and self.label_smoother is None
                and not self.aux_loss_enabled
                and self.eval_dataset is None
                and getattr(self.args, "loss_type", "nll") == "nll"
            )
            if self.lean_loss:  # no entropy / top-1 work in the head's kernels either
                base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
                add_fused_lm_head(base, outputs=("log_probs",))

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if not (self.lean_loss and self.model.training):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return (loss, outputs) if return_outputs else loss

    return LeanSFTTrainer


def make_trainer(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, list[int]]],
    cfg: DistillConfig,
    *,
    padding_free: bool,
    bf16: bool,
    progress: ProgressFn | None = None,
) -> Any:
    """Build an `SFTTrainer` over pre-labelled examples (TRL keeps our ``labels`` column as is)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**sft_config_kwargs(cfg, cuda=torch.cuda.is_available(), bf16=bf16, padding_free=padding_free))
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    callbacks = [_progress_callback(progress)] if progress else None
    trainer_cls = SFTTrainer if cfg.token_metrics else _lean_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if progress is not None:
        from transformers.trainer_callback import PrinterCallback

        # With disable_tqdm the trainer prints every log as a raw dict, which would break into the caller's display.
        trainer.remove_callback(PrinterCallback)
    return trainer


def _save(trainer: Any, tokenizer: Any, cfg: DistillConfig, base: str) -> None:
    out = cfg.out
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(unwrapped, "set_attn_implementation"):
        try:  # a reloaded student should not depend on our registered attention
            unwrapped.set_attn_implementation("sdpa")
        except Exception:  # only cosmetic for the saved config
            logger.debug("could not reset attention implementation before saving", exc_info=True)
    if cfg.lora and cfg.merge_lora:
        if trainer.accelerator.is_main_process:
            unwrapped.merge_and_unload().save_pretrained(out)
    else:
        # every rank takes part: FSDP/DeepSpeed gather the sharded weights, only the main process writes
        trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out)
        if cfg.lora and not cfg.merge_lora:
            (out / "refine_base_model.txt").write_text(base, encoding="utf-8")
    trainer.accelerator.wait_for_everyone()


def distill(
    data: Any,
    config: DistillConfig,
    *,
    progress: ProgressFn | None = None,
    source: str | None = None,
) -> DistillResult:
    """Distill training rows (or a path to them) into a student checkpoint at ``config.out``.

    Args:
        data: A run directory, an exported dataset path, or an iterable of rows (see `refine.distill.training_rows`).
        config: The run settings.
        progress: Called after every optimizer step as ``progress(step, total_steps, last_logs)``.
        source: Human-readable data origin for the model card (defaults to the path).

    Returns:
        The output folder, the ``local/<dir>`` model string to load it with, the loss history and token stats.

    Example:
        >>> res = distill("runs/synth-1", DistillConfig(out="runs/student", max_steps=20))  # doctest: +SKIP
        >>> lm = refine.lm.get_lm(res.model_string)  # doctest: +SKIP
    """
    _require_trl()
    import torch

    from refine.distill.model_card import data_provenance, write_loss_curve, write_model_card
    from refine.distill.training_rows import apply_ablation, load_rows
    from refine.store import package_versions

    rows = apply_ablation(load_rows(data), config.ablation)
    base = resolve_base(config.base)
    cuda = torch.cuda.is_available()
    bf16 = _bf16_ok() if config.bf16 == "auto" else bool(config.bf16)
    if bf16 and not cuda and config.bf16 == "auto":
        bf16 = False
    padding_free = cuda if config.padding_free == "auto" else bool(config.padding_free)
    padding_free = padding_free or config.packing
    model, tok = load_base(base, bf16=bf16, padding_free=padding_free)
    cap = getattr(model.config, "max_position_embeddings", None)
    examples, stats = tokenize_rows(tok, rows, config.max_length, cap=cap)
    if stats["max_length"] > config.max_length:  # rows kept whole: TRL must not cut them again
        config = config.model_copy(update={"max_length": stats["max_length"]})
    micro_tokens = config.batch_size * stats["max_length"]
    checkpointing = config.resolved_checkpointing(cuda=cuda, micro_tokens=micro_tokens, model_config=model.config)
    config = config.model_copy(update={"gradient_checkpointing": checkpointing})
    config.out.mkdir(parents=True, exist_ok=True)
    logger.info("distilling %d examples (%d tokens) into %s", stats["examples"], stats["tokens"], config.out)
    trainer = make_trainer(model, tok, examples, config, padding_free=padding_free, bf16=bf16, progress=progress)
    t0 = time.perf_counter()
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of GPU memory at batch_size={config.batch_size}: lower --batch-size or --max-length, or use --lora"
        ) from exc
    stats["train_seconds"] = round(time.perf_counter() - t0, 2)
    stats["padding_free"] = padding_free
    stats["bf16"] = bf16
    stats["gradient_checkpointing"] = checkpointing
    history = list(trainer.state.log_history)
    _save(trainer, tok, config, base)
    curve = None
    if trainer.accelerator.is_main_process:
        provenance = data_provenance(rows, source or (str(data) if isinstance(data, str | Path) else "rows"))
        cfg_json = json.loads(config.model_dump_json())
        write_model_card(
            config.out,
            base=base,
            config=cfg_json,
            provenance=provenance,
            stats=stats,
            versions=package_versions(),
            log_history=history,
        )
        (config.out / "refine_distill.json").write_text(
            json.dumps({"config": cfg_json, "base": base, "stats": stats, "log_history": history}, indent=2),
            encoding="utf-8",
        )
        if config.save_loss_curve:
            curve = write_loss_curve(history, config.out / "loss_curve.png")
    losses = [float(h["loss"]) for h in history if "loss" in h]
    return DistillResult(
        out=config.out,
        model_string=f"local/{config.out}",
        steps=int(trainer.state.global_step),
        losses=losses,
        stats=stats,
        loss_curve=curve,
    )
