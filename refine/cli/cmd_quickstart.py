"""`refine quickstart`: synthesize, distill, evaluate and report, offline on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refine.cli._common import ApiBaseOption, ApiKeyEnvOption, export_lm_env
from refine.cli._config import configurable


def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every stage's run directory.")] = Path(
        "runs/quickstart"
    ),
    preset: Annotated[str, typer.Option(help="Size: tiny (CI), small (default, < 20 min), medium, large.")] = "small",
    lm: Annotated[
        str, typer.Option("--lm", "--teacher", help="Teacher LM for one-shot synthesis (as `refine synth --lm`).")
    ] = "embedded",
    student: Annotated[str, typer.Option(help="Base student model: 'embedded' or 'local/<dir>'.")] = "embedded",
    api_base: ApiBaseOption = None,
    api_key_env: ApiKeyEnvOption = None,
    train_envs: Annotated[str, typer.Option(help="Held-in environments (on-policy synthesis, training).")] = (
        "babyai,pddl"
    ),
    heldout_envs: Annotated[str, typer.Option(help="Held-out environments (evaluation only).")] = (
        "scienceworld,textworld"
    ),
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    lora: Annotated[bool, typer.Option(help="Distill LoRA adapters (merged) instead of all weights.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Concurrent items/episodes (batched).")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per call to a remote LM.")] = 60.0,
    item_timeout: Annotated[
        float | None,
        typer.Option(
            "--item-timeout",
            min=0.1,
            help="Seconds per synthesis item or evaluation episode (default for remote LMs: as `refine synth "
            "--item-timeout` and `refine eval --episode-timeout`; in-process: none).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue the stages in --out (the default: finished stages are kept, others continue).",
        ),
    ] = True,
) -> None:
    """Run the whole loop offline: synthesize verified data, distill, evaluate base vs student, write a report.

    Every stage is resumable: run the same command again after an interruption (finished stages are skipped).
    --no-resume refuses an --out that already holds stages.
    """
    from rich.console import Console
    from rich.table import Table

    from refine.errors import ConfigError
    from refine.preflight import check_lm
    from refine.quickstart import PRESETS, QuickstartConfig, run_quickstart

    console = Console()
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; use one of {', '.join(PRESETS)}.")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds quickstart stages; pass --resume to continue them or another --out.")
    export_lm_env(api_base, api_key_env)  # the stages build their LMs from the specs, in this process
    check_lm(lm, flag="--lm", api_base=api_base, api_key_env=api_key_env, timeout=timeout)
    check_lm(student, flag="--student", timeout=timeout)

    def split(s: str) -> list[str]:
        return [x.strip() for x in s.split(",") if x.strip()]

    cfg = QuickstartConfig(
        out=out,
        preset=preset,  # type: ignore[arg-type]
        teacher=lm,
        student=student,
        train_envs=split(train_envs),
        heldout_envs=split(heldout_envs),
        seed=seed,
        lora=lora,
        workers=workers,
        timeout=timeout,
        item_timeout=item_timeout,
    )
    summary = run_quickstart(cfg, progress=lambda stage, msg: console.print(f"[bold cyan]{stage}[/]: {msg}"))
    table = Table(title="quickstart: base vs student (success / progress)")
    table.add_column("model")
    table.add_column("env")
    table.add_column("held")
    table.add_column("success", justify="right")
    table.add_column("progress", justify="right")
    for label in ("base", "student"):
        s = summary.get(f"eval_{label}")
        if not s:
            continue
        for env, entry in (s.get("envs") or {}).items():
            m = entry.get("base") or {}
            table.add_row(
                label,
                env,
                "in" if entry.get("held_in") else "out",
                f"{m.get('success_rate', 0):.2f}",
                f"{m.get('progress_rate', 0):.2f}",
            )
    console.print(table)
    if summary.get("effects"):
        from refine.quickstart import render_effects

        console.print("base -> student, paired by episode (95% intervals; README: 'What the quickstart shows'):")
        console.print(render_effects(summary["effects"]), markup=False, highlight=False)
    d = summary.get("distill") or {}
    console.print(
        f"synth: {summary.get('synth', {}).get('accepted', 0)} accepted one-shot; "
        f"env synthesis: {summary.get('synth_env', {}).get('accepted', 0)} accepted; distill: {d}"
    )
    console.print(f"report: {out / 'report' / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("quickstart")(configurable(quickstart))
