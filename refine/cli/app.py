"""The root `refine` Typer app; each area registers its commands from its own module."""

from __future__ import annotations

import os
import sys

import typer

from refine.cli import _areas

app = typer.Typer(
    name="refine",
    help="dspy-refine: synthesize, verify, optimize, distill and evaluate refinement-tuned LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _register in _areas.REGISTRARS:
    _register(app)


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]Error:[/] {message}", markup=True)


def main() -> None:
    """Entry point: user errors print one red line and exit 1, without a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from refine.errors import RefineError

    try:
        app()
    except RefineError as exc:
        _error(str(exc).replace("[", "\\["))
        sys.exit(1)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
