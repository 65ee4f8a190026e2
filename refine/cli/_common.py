"""Typer option types shared by every command that takes an LM (one name, one help text, everywhere)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["ApiBaseOption", "ApiKeyEnvOption", "check_agent_lm", "export_lm_env", "fail_if_all_episodes_failed"]

ApiBaseOption = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        help="Server URL for OpenAI-compatible servers (vLLM, SGLang, Ollama, llama.cpp), e.g. http://localhost:8000/v1."
        " A server that needs no key still needs a placeholder key: OPENAI_API_KEY=EMPTY.",
    ),
]
ApiKeyEnvOption = Annotated[
    str | None,
    typer.Option(
        "--api-key-env", help="Name of the environment variable holding the API key (default: the provider's own)."
    ),
]


def export_lm_env(api_base: str | None, api_key_env: str | None) -> None:
    """For commands that build their LMs from spec strings deep inside (optimize, quickstart, eval with Ray):
    `--api-base` / `--api-key-env` become OPENAI_API_BASE / OPENAI_API_KEY of this process (never written anywhere).
    """
    from refine.errors import ConfigError

    if api_base:
        os.environ["OPENAI_API_BASE"] = api_base
    if api_key_env:
        if not os.environ.get(api_key_env):
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set.")
        os.environ["OPENAI_API_KEY"] = os.environ[api_key_env]


def check_agent_lm(agent: str, lm: str | None, *, api_base: str | None, api_key_env: str | None) -> None:
    """Preflight of `refine eval`'s agent: the LM spec behind `--agent` (or `--lm` for chat/program/factories)."""
    from refine.preflight import check_lm

    module, sep, _ = agent.partition(":")
    if agent in ("chat", "program") or agent.startswith("program:"):
        spec, flag = lm or "embedded", "--lm"
    elif sep and "." in module and "/" not in module and not Path(agent).exists():
        spec, flag = lm, "--lm"  # a factory: it gets --lm (or None)
    else:
        spec, flag = agent, "--agent"
    if spec:
        check_lm(spec, flag=flag, api_base=api_base, api_key_env=api_key_env)


def fail_if_all_episodes_failed(summary: dict[str, Any], records: list[dict[str, Any]], out: Path | None) -> None:
    """Raise `RunFailedError` (and mark the run `failed`) when every episode ended with an error."""
    from refine.errors import RunFailedError
    from refine.health import failure_reason, mark_failed

    base = (summary.get("overall") or {}).get("base") or {}
    episodes, errors = int(base.get("episodes") or 0), int(base.get("errors") or 0)
    if not episodes or errors < episodes:
        return
    reason = failure_reason([{"error": r.get("error") or "error"} for r in records]) or f"all {episodes} failed"
    if out is not None:
        mark_failed(out, reason)
    raise RunFailedError(f"The evaluation failed ({reason.replace('items', 'episodes')}); no results to show.")
