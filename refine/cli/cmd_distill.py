"""CLI command of the distill area: `refine distill DATA --out DIR` trains a student on turn-masked trajectories."""

from __future__ import annotations

import time

import typer

from refine.cli._config import configurable

__all__ = ["register", "show_masks"]


def show_masks(data: str, base: str | None, n: int, ablation: str, max_length: int) -> None:
    """Print the first `n` training rows with trained tokens highlighted (green) and masked tokens dimmed."""
    from rich.console import Console
    from rich.text import Text
    from transformers import AutoTokenizer

    from refine.distill.labels import build_labels, render_mask
    from refine.distill.trainer import resolve_base
    from refine.distill.training_rows import apply_ablation, load_rows
    from refine.errors import TrainingError

    console = Console(highlight=False)
    rows = apply_ablation(load_rows(data), ablation)
    source = resolve_base(base)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the tokenizer of base model {source!r}: {exc}") from exc
    for row in rows[:n]:
        ex = build_labels(tok, row["messages"], max_length=max_length)
        pairs = render_mask(tok, ex)
        trained = sum(on for _, on in pairs)
        console.rule(f"{row['id']}: {len(pairs)} tokens, {trained} trained ({trained / max(1, len(pairs)):.0%})")
        text = Text()
        for piece, on in pairs:
            text.append(piece, style="bold green" if on else "dim")
        console.print(text)
    console.print("[bold green]green[/] = trained (labels = ids), [dim]dim[/] = masked (-100)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""

    @app.command("distill")
    @configurable
    def distill_cmd(
        data: str | None = typer.Argument(
            None,
            show_default=False,
            help="Run directory, any `refine export` output, a published set (AgentRefine, AgentGym, AgentInstruct, "
            "Agent-FLAN: file or folder) or hf:owner/name. Required: here or as `data` in --config.",
        ),
        out: str | None = typer.Option(None, "--out", "-o", help="Output folder of the student checkpoint."),
        base: str | None = typer.Option(
            None, "--base", help="Base model folder (default: the embedded SmolLM2-135M-Instruct)."
        ),
        lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters instead of all weights."),
        merge: bool = typer.Option(False, "--merge", help="With --lora: save the adapters merged into the weights."),
        max_steps: int = typer.Option(-1, "--max-steps", min=-1, help="Optimizer steps (-1: run --epochs)."),
        epochs: float = typer.Option(3.0, "--epochs", help="Passes over the data when --max-steps is -1."),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 2e-5 full, 2e-4 LoRA)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Trajectories per device per micro-batch."),
        grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
        max_length: int = typer.Option(
            2048,
            "--max-length",
            help="Tokens per trajectory; one whose trained turns would be cut is kept whole (up to the model's "
            "context length) or refused, and the console says how many.",
        ),
        ablation: str = typer.Option("masked", "--ablation", help="masked | trained | no-refine."),
        padding_free: str = typer.Option("auto", "--padding-free", help="auto (on with CUDA) | on | off."),
        packing: bool = typer.Option(
            False, "--packing", help="Pack trajectories into --max-length rows (best-fit decreasing)."
        ),
        compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (GPU, ~1.5 min start)."),
        no_checkpointing: bool = typer.Option(
            False,
            "--no-checkpointing",
            help="Keep activations (faster, more memory); default: auto (on with CUDA; on CPU if they would not fit).",
        ),
        seed: int = typer.Option(0, "--seed"),
        show: int = typer.Option(
            0, "--show-masks", help="Print N examples with trained tokens highlighted, then exit."
        ),
    ) -> None:
        """Distill trajectories into a student model with TRL (erroneous turns in context, masked from the loss)."""
        from rich.console import Console

        from refine.distill.launch import build_config, check_choices, result_lines
        from refine.errors import ConfigError

        if data is None:
            raise ConfigError(
                "Pass DATA (a run directory, an export or hf:owner/name): `refine distill DATA --out DIR`, "
                'or `data = "..."` in the [distill] table of --config.'
            )
        options = dict(base=base, lora=lora, merge=merge, max_steps=max_steps, epochs=epochs, lr=lr)
        options.update(batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, ablation=ablation)
        options.update(padding_free=padding_free, packing=packing, compile_model=compile_model, seed=seed)
        if show:
            check_choices(ablation, padding_free)
            show_masks(data, base, show, ablation, max_length)
            return
        cfg = build_config(out, no_checkpointing=no_checkpointing, **options)
        import os

        from refine.distill.trainer import distill

        # under accelerate/torchrun every rank runs this command: only the first one reports
        console = Console(quiet=os.environ.get("RANK", "0") != "0")
        result = _train_with_progress(console, data, cfg, distill)
        for line in result_lines(result):
            console.print(line)


def _train_with_progress(console, data, cfg, distill):  # type: ignore[no-untyped-def]
    import datasets
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    datasets.disable_progress_bars()  # TRL's dataset preparation bars ("Truncating train dataset") would cut in

    with Progress(
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tokens/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=None, loss="-", speed="-")
        first: list[float] = []  # (time, tokens) at the first step: model loading is not training time

        def progress(step: int, total: int, logs: dict[str, float]) -> None:
            loss = logs.get("loss")
            now, seen = time.perf_counter(), float(logs.get("tokens_seen") or 0)
            if not first:
                first.extend((now, seen))
            wall, tokens = now - first[0], seen - first[1]
            bar.update(
                task,
                completed=step,
                total=total,
                loss=f"{loss:.4f}" if loss is not None else "-",
                speed=f"{tokens / wall:,.0f}" if tokens > 0 and wall > 0 else "-",
            )

        return distill(data, cfg, progress=progress)
