"""`refine synth`: synthesize verified refinement trajectories into a run directory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from refine.cli._common import ApiBaseOption, ApiKeyEnvOption
from refine.cli._config import configurable
from refine.preflight import LM_SPEC_HELP

LM_HELP = "Teacher LM: " + LM_SPEC_HELP


def synth(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (created; with --resume, continued). Required.")
    ] = None,
    personas: Annotated[str, typer.Option(help="'builtin' or a JSONL/CSV/text file of personas.")] = "builtin",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of (persona, seed) items.")] = 4,
    lm: Annotated[str, typer.Option("--lm", help=LM_HELP)] = "embedded",
    api_base: ApiBaseOption = None,
    api_key_env: ApiKeyEnvOption = None,
    program: Annotated[
        str, typer.Option(help="Built-in name (agentrefine; interactive with --env), 'pkg.module:attr', a saved dir.")
    ] = "agentrefine",
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="Real environment(s) the program plays (comma-separated or repeated; train split), e.g. "
            "--program interactive --env babyai --refiner env: on-policy data. --n is then episodes per env.",
        ),
    ] = None,
    refiner: Annotated[
        str, typer.Option(help="With --env: who fixes a flagged step, 'lm' (the LM) or 'env' (the env's expert).")
    ] = "lm",
    max_steps: Annotated[int, typer.Option(min=1, help="With --env: player actions per episode.")] = 30,
    max_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Tokens per LM call (default 2048; 96 per turn with --env)."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Parallel items (threads/Ray tasks).")] = 8,
    seed: Annotated[int, typer.Option(help="Base seed (persona order and per-item seeds).")] = 0,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per stage before rejection.")] = 4,
    min_refinements: Annotated[int, typer.Option(min=0, help="Error -> fix episodes required.")] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in --out (same settings).")] = False,
    executor: Annotated[str, typer.Option(help="local (threads, default) or ray (Ray tasks).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (with --executor ray).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per call to a remote LM.")] = 60.0,
    item_timeout: Annotated[
        float | None, typer.Option("--item-timeout", min=0.1, help="Seconds per item (default timeout x 2 x attempts).")
    ] = None,
    keep_failed: Annotated[
        bool, typer.Option("--keep-failed", help="With --resume, leave items that failed on LM transport pending.")
    ] = False,
    trust_program: Annotated[
        list[str] | None, typer.Option("--trust-program", help="'module:attr' a saved --program DIR may name.")
    ] = None,
) -> None:
    """Synthesize verified refinement trajectories (from personas, or by playing real environments with --env) and
    store accepted/rejected records."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from refine.errors import ConfigError, RunFailedError
    from refine.health import failure_reason, mark_failed
    from refine.preflight import check_env_names, check_lm, check_name, check_personas, lm_options
    from refine.synth import SynthConfig, lm_settings, run_synth

    if out is None:
        raise ConfigError("Pass --out DIR (the run directory), on the command line or as `out` in --config.")
    check_name(refiner, ("lm", "env"), "refiner", "--refiner")
    config = SynthConfig(
        personas=personas,
        n=n,
        lm=lm,
        program=program,
        seed=seed,
        max_attempts=max_attempts,
        min_refinements=min_refinements,
        workers=workers,
        timeout=timeout,
        item_timeout=item_timeout,
        keep_failed=keep_failed,
        trust_program=trust_program or [],
        env=[e.strip() for value in env or [] for e in value.split(",") if e.strip()],
        refiner=refiner,  # type: ignore[arg-type]  # checked above
        max_steps=max_steps,
        max_tokens=max_tokens,
    )
    # Preflight: every input is checked before the first item, so a typo costs a second, not a run.
    if config.env:
        check_env_names(config.env, flag="--env")
    else:
        check_personas(config.personas)
    options = lm_options(api_base, api_key_env)
    if options and executor == "ray":
        raise ConfigError(
            "--api-base/--api-key-env are not passed to Ray workers; set OPENAI_API_BASE / OPENAI_API_KEY in the "
            "workers' environment instead."
        )
    check_lm(config.lm, flag="--lm", api_base=api_base, api_key_env=api_key_env, timeout=config.timeout)
    the_lm = None
    if options:
        from refine.lm.resolve import resolve_lm

        the_lm = resolve_lm(config.lm, **{**lm_settings(config), **options})
    console = Console(stderr=True)
    columns = [
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[accepted]} accepted[/] ({task.fields[rate]}) [red]{task.fields[rejected]} rejected[/]"
        ),
        TextColumn("{task.fields[failed]} failed  {task.fields[tokens]:,} tokens"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    total = n * max(1, len(config.env))
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("synth", total=total, accepted=0, rejected=0, failed=0, tokens=0, rate="-")
        update = functools.partial(_update_bar, bar, task)
        totals = run_synth(
            config,
            out,
            resume=resume,
            lm=the_lm,
            progress=lambda outcome, counts: update(counts),
            on_call=update,
            executor=executor,
            ray_address=ray_address,
        )
    table = Table(title=f"refine synth -> {out}", show_header=False)
    table.add_row("accepted", str(totals["accepted"]))
    table.add_row("rejected", str(totals["rejected"]))
    table.add_row("items with parse failures", str(totals["items_with_parse_failures"]))
    table.add_row("LM calls", str(totals["lm_calls"]))
    if totals.get("retried_calls") or totals.get("failed_calls"):  # transport faults that were got over
        retried, failed = totals.get("retried_calls", 0), totals.get("failed_calls", 0)
        table.add_row("LM calls retried / failed", f"{retried} / {failed}")
    table.add_row("tokens", f"{totals['tokens']:,}")
    for model, tpa in totals["tokens_per_accepted"].items():
        table.add_row(f"tokens / accepted ({model})", "n/a" if tpa is None else f"{tpa:,}")
    if totals.get("pending"):
        table.add_row("pending (failed items; rerun with --resume)", str(totals["pending"]))
    Console().print(table)
    reason = failure_reason(_item_records(out))
    if reason:
        mark_failed(out, reason)
        raise RunFailedError(
            f"The synthesis run failed ({reason}); the manifest says 'failed'. Fix the cause and rerun."
        )


def _update_bar(bar: Any, task: Any, counts: dict[str, Any]) -> None:
    """Move the synth bar: items (finished, plus the estimated share of the running ones, so the ETA shows before
    the first item ends), accept rate, tokens. Called after each item and as each LM call ends."""
    judged = counts["accepted"] + counts["rejected"]
    finished = judged + counts["failed"] + counts["skipped"]
    bar.update(
        task,
        completed=finished + counts.get("in_flight", 0.0),
        rate=f"{counts['accepted'] / judged:.0%}" if judged else "-",
        accepted=counts["accepted"],
        rejected=counts["rejected"],
        failed=counts["failed"],
        tokens=counts["tokens"],
    )


def _item_records(out: Path) -> list[dict]:
    """One record per item: accepted/rejected records, plus items that only failed (errors.jsonl)."""
    from refine.store import RunStore

    store = RunStore.open_existing(out)
    records = [*store.records("accepted"), *store.records("rejected")]
    seen = {r.get("key") for r in records}
    for err in store.records("errors"):
        item = err.get("item")
        if item and item not in seen:
            seen.add(item)
            records.append({"key": item, "error": err.get("error")})
    return records


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("synth")(configurable(synth))
