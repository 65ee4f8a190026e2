"""CLI commands of the lm area: `refine lm check` loads a model and answers one structured question."""

from __future__ import annotations

import os

import typer

from refine.cli._common import ApiBaseOption, ApiKeyEnvOption
from refine.preflight import LM_SPEC_HELP

__all__ = ["register"]

_DEFAULT_PROMPT = "A kitchen has a fridge, a sink and a table. The goal is to put a cold apple on the table."


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    lm_app = typer.Typer(help="Inspect and check LMs (embedded default, local checkpoints, LiteLLM models).")
    app.add_typer(lm_app, name="lm")

    @lm_app.command("check")
    def check(
        spec: str | None = typer.Argument(
            None, metavar="[MODEL]", help="The LM spec (same as --model). " + LM_SPEC_HELP
        ),
        model: str | None = typer.Option(None, "--model", "-m", help="The LM spec (default: embedded)."),
        prompt: str = typer.Option(_DEFAULT_PROMPT, "--prompt", "-p", help="Situation the model plans a step for."),
        max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Generation limit."),
        api_base: ApiBaseOption = None,
        api_key_env: ApiKeyEnvOption = None,
    ) -> None:
        """Load MODEL, answer one typed question about PROMPT, and report the parsed answer, load time and tokens/s."""
        import time

        from rich.console import Console
        from rich.table import Table

        from refine.errors import ConfigError
        from refine.lm.check import run_check
        from refine.preflight import check_lm

        if spec and model and spec != model:
            raise ConfigError(f"Two models given ({spec!r} and --model {model!r}); pass one.")
        model = spec or model or "embedded"
        check_lm(model, flag="MODEL", api_base=api_base, api_key_env=api_key_env, probe=False)
        if api_key_env:
            os.environ.setdefault("OPENAI_API_KEY", os.environ[api_key_env])
        console = Console()
        with console.status(f"Loading and querying {model} ..."):
            started = time.perf_counter()
            report = run_check(model, prompt, max_tokens=max_tokens, api_base=api_base)
        table = Table(title=f"refine lm check: {model}", show_header=False)
        for field, value in report.answer.items():
            table.add_row(f"[bold]{field}[/]", repr(value))
        console.print(table)
        console.print(
            f"load {report.load_seconds:.1f} s | answer {report.answer_seconds:.1f} s | "
            f"{report.output_tokens} tokens, {report.tokens_per_second:.1f} tokens/s | "
            f"adapter {report.adapter} | total {time.perf_counter() - started:.1f} s"
        )
