"""`refine optimize`: tune the prompts of a refinement program with BootstrapFewShot, MIPROv2 or GEPA under an LM
budget, and save the optimized program with a before/after report."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from refine.cli._common import ApiBaseOption, ApiKeyEnvOption, export_lm_env
from refine.cli._config import configurable
from refine.preflight import LM_SPEC_HELP

__all__ = ["optimize_command", "register"]

_PROGRAM_HELP = (
    "Program: built-in name (agentrefine, interactive, self_refine, reflexion), 'package.module:attr', "
    "or a directory saved by `refine optimize`."
)
_LM_HELP = "Task LM: " + LM_SPEC_HELP
_METRIC_HELP = (
    "verifier | verdict | script | trajectory | episode | label_match | 'package.module:function' "
    "(default: chosen from the program's outputs)."
)


def _parse_options(pairs: list[str], flag: str = "--option") -> dict[str, Any]:
    from refine.errors import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{flag} {pair!r} must look like key=value (value parsed as JSON when it can be).")
        key, raw = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def optimize_command(
    program: Annotated[str, typer.Argument(help=_PROGRAM_HELP)],
    method: Annotated[str, typer.Option("--method", "-m", help="bootstrap | mipro | gepa")] = "bootstrap",
    preset: Annotated[str, typer.Option("--preset", "-p", help="light | medium | heavy (optimizer budget)")] = "light",
    trainset: Annotated[Path | None, typer.Option(help='JSONL of training inputs, e.g. {"persona": ...} rows.')] = None,
    devset: Annotated[Path | None, typer.Option(help="JSONL of held-out inputs for before/after scores.")] = None,
    lm: Annotated[str | None, typer.Option("--lm", help=_LM_HELP)] = None,
    reflection_lm: Annotated[
        str | None, typer.Option(help="LM for GEPA reflection / MIPRO proposals (same LM spec grammar as --lm).")
    ] = None,
    api_base: ApiBaseOption = None,
    api_key_env: ApiKeyEnvOption = None,
    metric: Annotated[str | None, typer.Option(help=_METRIC_HELP)] = None,
    max_calls: Annotated[int | None, typer.Option(min=1, help="Hard limit on LM calls (never exceeded).")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Hard limit on LM tokens (never exceeded).")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", help="Program option key=value (JSON value, checked against the program), repeatable."
        ),
    ] = None,
    optimizer_arg: Annotated[
        list[str] | None,
        typer.Option("--optimizer-arg", help="Extra DSPy optimizer argument key=value, e.g. max_metric_calls=300."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per call to a remote LM.")] = 60.0,
    num_threads: Annotated[int, typer.Option(min=1, help="Threads for evaluation and optimization.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the optimizer's sampling.")] = 0,
    log_dir: Annotated[
        Path | None, typer.Option(help="GEPA checkpoint dir (default OUT/gepa); reuse to resume.")
    ] = None,
    mlflow: Annotated[
        bool | None, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow (default: if installed).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cost estimate and exit (no LM call).")] = False,
    trust_program: Annotated[
        list[str] | None, typer.Option("--trust-program", help="'module:attr' a saved program DIR may name.")
    ] = None,
    unsafe_pickle_checkpoint: Annotated[
        bool,
        typer.Option(
            "--unsafe-pickle-checkpoint",
            help="Resume from a GEPA checkpoint that holds Python objects: loading it runs any code it names.",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory: program.json, report.json, report.md.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the optimizer's own log lines.")] = False,
) -> None:
    """Optimize every predictor of a refinement program and save the result (see `refine synth --program DIR`)."""
    import logging

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from refine.errors import ConfigError
    from refine.optimizers.prompt_opt import OptimizeConfig, optimize
    from refine.preflight import check_lm, parse_program_options

    # Bound to the real stderr: without --verbose the optimizers' own prints and tqdm bars go to /dev/null.
    console = Console(file=sys.stderr, highlight=False)
    if not dry_run and out is None:
        raise ConfigError("Pass --out DIR for the optimized program and its report (or --dry-run for the estimate).")
    try:
        cfg = OptimizeConfig(
            program=None if Path(program).is_dir() else program,
            program_options=parse_program_options(option or [], None if Path(program).is_dir() else program),
            optimizer_kwargs=_parse_options(optimizer_arg or [], "--optimizer-arg"),
            method=method,
            preset=preset,
            trainset=trainset,
            devset=devset,
            lm=lm,
            reflection_lm=reflection_lm,
            metric=metric,
            max_calls=max_calls,
            max_tokens=max_tokens,
            num_threads=num_threads,
            timeout=timeout,
            seed=seed,
            out=out,
            log_dir=log_dir,
            mlflow=mlflow,
            dry_run=dry_run,
            trust_program=trust_program or [],
            unsafe_pickle_checkpoint=unsafe_pickle_checkpoint,
        )
    except ValueError as exc:  # pydantic: name the offending option in one line
        errors = getattr(exc, "errors", lambda: [])()
        detail = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in errors)
        raise ConfigError(detail or str(exc)) from None
    if cfg.trainset is None:
        raise ConfigError("Pass --trainset FILE (JSONL, one example per line).")
    export_lm_env(api_base, api_key_env)  # the optimizer builds its LMs from the specs, in this process
    if not dry_run:  # the dry run makes no LM call at all
        for flag, spec in (("--lm", cfg.lm), ("--reflection-lm", cfg.reflection_lm)):
            if spec:
                check_lm(spec, flag=flag, api_base=api_base, api_key_env=api_key_env, timeout=cfg.timeout)
    if not verbose:
        logging.getLogger("dspy").setLevel(logging.ERROR)
        logging.getLogger("optuna").setLevel(logging.ERROR)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("LM calls"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    state: dict[str, Any] = {"task": None}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "estimate":
            est = data["estimate"]
            console.print(est.to_text())
            calls, tokens = data["budget"]
            if calls is not None or tokens is not None:
                fits = est.fits(calls, tokens)
                note = "fits" if fits else "[yellow]may not fit: the run stops cleanly when it is spent[/]"
                budget = " and ".join(x for x in (calls and f"{calls:,} calls", tokens and f"{tokens:,} tokens") if x)
                console.print(f"Budget: {budget} ({note}).")
            if not cfg.dry_run:
                total = min(est.calls, calls) if calls is not None else est.calls
                progress.start()
                state["task"] = progress.add_task("starting", total=total)
        elif kind == "phase" and state["task"] is not None:
            progress.update(state["task"], description=data["name"])
        elif kind == "spend" and state["task"] is not None:
            spend = data["spend"]
            task = progress.tasks[0]
            progress.update(state["task"], completed=spend.calls, total=max(task.total or 0, spend.calls))
        elif kind == "done" and state["task"] is not None:
            progress.stop()

    with contextlib.ExitStack() as stack:
        if not verbose:
            sink = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
        try:
            result = optimize(program if Path(program).is_dir() else None, config=cfg, on_event=on_event)
        finally:
            if state["task"] is not None:
                progress.stop()
    if result.status == "dry_run":
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    color = "green" if result.status == "completed" else "yellow"
    console.print(
        f"[{color}]{result.status}[/]: score {fmt(result.score_before)} -> {fmt(result.score_after)}; "
        f"{result.spend.calls:,} LM calls, {result.spend.tokens:,} tokens, {result.seconds:.1f} s."
    )
    if result.message:
        console.print(f"[yellow]{result.message}[/]")
    changed = [c.name for c in result.changes if c.changed]
    console.print(f"Changed predictors: {', '.join(changed) if changed else 'none'}.")
    if result.paths:
        console.print(f"Saved {result.paths['program']} and {result.paths['markdown']}.")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("optimize")(configurable(optimize_command))
