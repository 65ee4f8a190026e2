"""The root `refine` Typer app; each area registers its commands from its own module."""

from __future__ import annotations

import logging
import os
import signal
import sys

import typer

from refine.cli import _areas

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _version(value: bool) -> None:
    if value:
        from refine import __version__

        typer.echo(f"dspy-refine {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="refine",
    help="dspy-refine: synthesize, verify, optimize, distill and evaluate refinement-tuned LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=CONTEXT,
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """dspy-refine: synthesize, verify, optimize, distill and evaluate refinement-tuned LLM agents.

    LM specs (--lm, --agent, --teacher, --student, --reflection-lm) all follow one grammar: 'embedded',
    'local/<dir>', 'hf/<repo>', a LiteLLM model string ('openai/gpt-4o-mini', 'openai/<name>' with --api-base for
    vLLM/SGLang/Ollama/llama.cpp servers) or 'py:package.module:factory'.
    """


for _register in _areas.REGISTRARS:
    _register(app)


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]Error:[/] {message}", markup=True)


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[yellow]Note:[/] {message}", markup=True)


class _TruncationCounter(logging.Filter):
    """Counts DSPy's per-call "LM response was truncated" warnings instead of printing one per turn."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "response was truncated" in record.getMessage():
            self.count += 1
            return False
        return True


def _one_line(exc: BaseException) -> str:
    """A pydantic ValidationError as one line naming each field (as its CLI flag) and the problem."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for e in errors():
        loc = "-".join(str(p) for p in e.get("loc", ()) if not isinstance(p, int)).replace("_", "-")
        parts.append(f"--{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts) + " (see --help)"


def main() -> None:
    """Entry point: user errors print one red line and exit 1, an interrupt exits 130, never with a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # `py:` LM specs, `module:attr` programs and metrics name the user's own modules, usually in the current folder;
    # a console script (unlike `python -m`) does not put it on sys.path.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from pydantic import ValidationError

    from refine import interrupt
    from refine.errors import RefineError
    from refine.interrupt import handle_signals

    truncated = _TruncationCounter()
    logging.getLogger("dspy.clients.lm").addFilter(truncated)
    code = 0
    try:
        with handle_signals():
            # Not standalone: RefineErrors reach the handlers below, and an interrupt keeps its own exit code.
            rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.TyperException as exc:  # usage errors (click's, vendored by typer): their usual message, exit 2
        _show_usage_error(exc)
        code = exc.exit_code
    except typer.Abort:
        code = 1
    except RefineError as exc:
        _error(str(exc).replace("[", "\\["))
        code = 1
    except ValidationError as exc:
        _error(_one_line(exc).replace("[", "\\["))
        code = 1
    except KeyboardInterrupt:  # Interrupted included; typer turns most into exit code 130 (handled below)
        code = 130
    finally:
        from refine.interrupt import drain

        drain()
    if truncated.count:
        _warn(
            f"{truncated.count} LM response(s) stopped at their max_tokens limit (their fields may be cut short; "
            "raise --max-tokens where the command has it)."
        )
    if code == 130 or interrupt.requested():
        signum = interrupt.last_signal()
        _error("interrupted; unfinished items are marked in the run directory: rerun the same command with --resume")
        code = 143 if signum == signal.SIGTERM else 130
    sys.exit(code)


def _show_usage_error(exc: typer.TyperException) -> None:
    """A usage error as one red line naming the command's help; a bare group still shows its help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        getattr(exc, "show", lambda: _error(str(exc)))()
        return
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
    _error((exc.format_message() + where).replace("[", "\\["))
