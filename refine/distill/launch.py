"""The training entry without the CLI: `python -m refine.distill DATA --out DIR ...` for `accelerate launch -m`.

    accelerate launch --config_file examples/accelerate/fsdp.yaml -m refine.distill runs/synth --out runs/student

Under accelerate (or torchrun) every rank runs this module, so it must not pay for the whole CLI (Typer, every
command's imports): it parses the training options of `refine distill` with `argparse` and calls `distill()`. The
options and their checks are the same as the command's (`build_config` is shared; tests/test_distill_cli.py compares
the two option lists). `--config FILE` is the CLI's: `accelerate launch -m refine distill --config FILE` runs the
command itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refine.errors import ConfigError, RefineError

if TYPE_CHECKING:
    from refine.distill.config import DistillConfig
    from refine.distill.trainer import DistillResult

__all__ = ["build_config", "check_choices", "main", "parser", "result_lines"]

PADDING_FREE = {"auto": "auto", "on": True, "off": False}


def check_choices(ablation: str, padding_free: str) -> None:
    """`ConfigError` naming the option when --ablation or --padding-free is not one of its values."""
    from refine.distill.config import ABLATIONS

    if ablation not in ABLATIONS:
        raise ConfigError(f"--ablation {ablation!r} is not one of {', '.join(ABLATIONS)}")
    if padding_free not in PADDING_FREE:
        raise ConfigError(f"--padding-free {padding_free!r} is not one of auto, on, off")


def build_config(
    out: str | None,
    *,
    base: str | None = None,
    lora: bool = False,
    merge: bool = False,
    max_steps: int = -1,
    epochs: float = 3.0,
    lr: float | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_length: int = 2048,
    ablation: str = "masked",
    padding_free: str = "auto",
    packing: bool = False,
    compile_model: bool = False,
    no_checkpointing: bool = False,
    seed: int = 0,
) -> DistillConfig:
    """The `DistillConfig` of `refine distill`'s options; `ConfigError` naming the option for a wrong value."""
    from refine.distill.config import DistillConfig

    check_choices(ablation, padding_free)
    if out is None:
        raise ConfigError("--out is required to train (the folder the student checkpoint is written to)")
    if merge and not lora:
        raise ConfigError("--merge only applies to --lora training")
    return DistillConfig(
        out=Path(out),
        base=base,
        ablation=ablation,  # type: ignore[arg-type]
        lora=lora,
        merge_lora=merge,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        padding_free=PADDING_FREE[padding_free],  # type: ignore[arg-type]
        torch_compile=compile_model,
        packing=packing,
        gradient_checkpointing=False if no_checkpointing else "auto",
        seed=seed,
    )


def result_lines(result: DistillResult) -> list[str]:
    """What a finished training prints (rich markup): the student, its steps and losses, lengths, how to load it."""
    from refine.distill.model_card import length_summary

    first = (
        f"[bold green]student[/] {result.out}  steps {result.steps}  "
        f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}  "
        f"({result.stats['examples']} trajectories, {result.stats['trained_tokens']} trained tokens, "
        f"{result.stats['train_seconds']} s)"
        if result.losses
        else f"[bold green]student[/] {result.out}  steps {result.steps}"
    )
    return [first, f"length: {length_summary(result.stats)}", f"load it with refine.lm.get_lm({result.model_string!r})"]


def parser() -> argparse.ArgumentParser:
    """The training options of `refine distill` (same names, defaults and meaning)."""
    p = argparse.ArgumentParser(prog="python -m refine.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="Run directory, any `refine export` output, a published set or hf:owner/name.")
    p.add_argument("--out", "-o", help="Output folder of the student checkpoint.")
    p.add_argument("--base", help="Base model folder (default: the embedded SmolLM2-135M-Instruct).")
    p.add_argument("--lora", action="store_true", help="Train LoRA adapters instead of all weights.")
    p.add_argument("--merge", action="store_true", help="With --lora: save the adapters merged into the weights.")
    p.add_argument("--max-steps", type=int, default=-1, help="Optimizer steps (-1: run --epochs).")
    p.add_argument("--epochs", type=float, default=3.0, help="Passes over the data when --max-steps is -1.")
    p.add_argument("--lr", type=float, default=None, help="Learning rate (default 2e-5 full, 2e-4 LoRA).")
    p.add_argument("--batch-size", type=int, default=8, help="Trajectories per device per micro-batch.")
    p.add_argument("--grad-accum", type=int, default=1, help="Micro-batches per optimizer step.")
    p.add_argument("--max-length", type=int, default=2048, help="Tokens per trajectory.")
    p.add_argument("--ablation", default="masked", help="masked | trained | no-refine.")
    p.add_argument("--padding-free", default="auto", help="auto (on with CUDA) | on | off.")
    p.add_argument("--packing", action="store_true", help="Pack trajectories into --max-length rows.")
    p.add_argument("--compile", dest="compile_model", action="store_true", help="torch.compile the model.")
    p.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="Keep activations (faster, more memory); default: auto (on with CUDA; on CPU if they would not fit).",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train from the command line. Like the CLI: a wrong option or a failed training is one line on stderr and exit
    code 1 (a malformed command line: argparse's usage, exit 2), Ctrl-C exits 130."""
    options: dict[str, Any] = vars(parser().parse_args(argv))
    data = options.pop("data")
    rank0 = os.environ.get("RANK", "0") == "0"  # every rank runs this: only the first one reports
    try:
        cfg = build_config(options.pop("out"), **options)
        from refine.distill.trainer import distill

        result = distill(data, cfg)
    except RefineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    from rich.console import Console

    console = Console(quiet=not rank0, highlight=False)
    for line in result_lines(result):
        console.print(line)
    return 0
