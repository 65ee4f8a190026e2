"""Typer option types shared by every command that takes an LM (one name, one help text, everywhere)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ApiBaseOption", "ApiKeyEnvOption", "check_agent_lm", "export_lm_env"]

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
        from refine.lm.failures import KEY_ENV_VAR

        os.environ[KEY_ENV_VAR] = api_key_env  # a refused key then names the variable the user set


def check_agent_lm(
    agent: str, lm: str | None, *, api_base: str | None, api_key_env: str | None, timeout: float | None = None
) -> str | None:
    """Preflight of `refine eval`'s agent: the LM spec behind `--agent` (or `--lm` for chat/program/factories).

    Returns the spec it checked (None for a factory without --lm)."""
    from refine.preflight import check_lm

    module, sep, _ = agent.partition(":")
    if agent in ("chat", "program") or agent.startswith("program:"):
        spec, flag = lm or "embedded", "--lm"
    elif sep and "." in module and "/" not in module and not Path(agent).exists():
        spec, flag = lm, "--lm"  # a factory: it gets --lm (or None)
    else:
        spec, flag = agent, "--agent"
    if spec:
        check_lm(spec, flag=flag, api_base=api_base, api_key_env=api_key_env, timeout=timeout)
    return spec
