"""CLI commands of the lm area: `refine lm check` loads a model and answers one structured question."""

from __future__ import annotations

import typer

__all__ = ["register"]

_DEFAULT_PROMPT = "A kitchen has a fridge, a sink and a table. The goal is to put a cold apple on the table."


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    lm_app = typer.Typer(help="Inspect and check LMs (embedded default, local checkpoints, LiteLLM models).")
    app.add_typer(lm_app, name="lm")

    @lm_app.command("check")
    def check(
        model: str = typer.Option("embedded", "--model", "-m", help="embedded, local/<dir>, hf/<repo> or LiteLLM."),
        prompt: str = typer.Option(_DEFAULT_PROMPT, "--prompt", "-p", help="Situation the model plans a step for."),
        max_tokens: int = typer.Option(256, "--max-tokens", help="Generation limit."),
        api_base: str | None = typer.Option(None, "--api-base", help="Server URL for OpenAI-compatible servers."),
    ) -> None:
        """Load MODEL, answer one typed question about PROMPT, and report the parsed answer, load time and tokens/s."""
        import time

        from rich.console import Console
        from rich.table import Table

        from refine.lm.check import run_check

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
