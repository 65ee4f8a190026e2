"""The one LM-spec resolver: a spec -> a configured LM, for every command, worker and optimizer.

`resolve_lm(spec)` takes the whole grammar: an existing `dspy.BaseLM` (returned as is), `py:package.module:attr`
(an LM object or a factory of one, `refine.imports.load_py_lm`), or a model string for `get_lm`: `embedded`,
`local/<dir>` or a checkpoint folder, `hf/<repo>`, any LiteLLM string.

`get_lm("embedded")` (the default) needs no key and no network. `local/<dir>` serves a saved checkpoint (a distilled
student) with the same engine, `hf/<repo>` loads from the hub, and every other string is a plain `dspy.LM` model
(OpenAI-compatible servers such as vLLM, SGLang, Ollama or llama.cpp's server via `openai/<name>` + `api_base`);
API keys are read from the environment by LiteLLM and never stored by dspy-refine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import dspy

from refine.errors import ConfigError, LMError
from refine.imports import PY_PREFIX, load_py_lm
from refine.lm.adapter import GrammarChatAdapter, default_adapter
from refine.lm.loader import EMBEDDED, is_local_model

__all__ = ["ADAPTERS", "configure", "configure_cache", "get_lm", "is_remote", "resolve_lm"]

logger = logging.getLogger(__name__)

#: Adapter names accepted by `configure(adapter=...)`.
ADAPTERS = ("auto", "grammar", "chat", "json")

_ENGINE_KEYS = ("max_batch", "batch_wait_ms", "default_max_tokens", "dtype", "quantize", "torch_threads", "bounds")
_LOCAL_DEFAULTS = {"max_tokens": 512, "temperature": 0.0}
# Seconds one call to a remote LM may take unless `timeout=` is given (the client default is 600 s per read).
REMOTE_TIMEOUT_S = 60.0
_REMOTE_DEFAULTS = {"max_tokens": 1024, "temperature": 0.0}


def _local_model_string(model: str) -> str:
    """Normalize a bare checkpoint path to `local/<absolute path>` (so the engine and the cache key agree)."""
    if model == EMBEDDED or model.startswith(("local/", "hf/")):
        return model
    return "local/" + str(Path(model).expanduser().resolve())


def get_lm(model: str = EMBEDDED, **lm_kwargs: Any) -> dspy.LM:
    """Build a `dspy.LM` for a model string.

    Args:
        model: `embedded` (default; SmolLM2-135M-Instruct in-process), `local/<dir>` or a checkpoint folder,
            `hf/<repo_id>`, or any LiteLLM model string (e.g. `openai/gpt-4o-mini`, `openai/<name>` with `api_base=`
            for a local server).
        **lm_kwargs: passed to `dspy.LM` (`max_tokens`, `temperature`, `cache`, `num_retries`, ...); remote LMs
            always get `max_tokens` (default 1024) and `temperature` (default 0), and `api_key_env="NAME"` reads
            the key from that environment variable (never stored). For in-process
            models the engine settings `max_batch`, `batch_wait_ms`, `default_max_tokens`, `dtype`, `torch_threads`
            and `bounds` are taken out and given to the shared `LocalEngine`.

    Returns:
        The LM. In-process models load lazily, on the first call.

    Raises:
        LMError: when the model string is empty, or an in-process checkpoint folder is missing.
        ConfigError: when connection settings are given for an in-process model.

    Example:
        >>> from refine.lm import get_lm
        >>> lm = get_lm("embedded", max_tokens=256)
        >>> lm.model
        'embedded'
    """
    if not model or not model.strip():
        raise LMError("Empty model string. Use 'embedded', 'local/<dir>', 'hf/<repo>' or a LiteLLM model string")
    key_env = lm_kwargs.pop("api_key_env", None)
    if not is_local_model(model):
        # LiteLLM / lm15 path; keys come from the environment (OPENAI_API_KEY, ...) unless the caller passes one.
        lm_kwargs.setdefault("timeout", REMOTE_TIMEOUT_S)
        if key_env:
            if not os.environ.get(key_env):
                raise ConfigError(f"api_key_env={key_env!r} (--api-key-env): the environment variable is not set.")
            lm_kwargs.setdefault("api_key", os.environ[key_env])
        # Always send a generation limit and a temperature: without them a server applies its own cap (often
        # 1,024 tokens or less) and its own sampling, so the same run would behave differently on every backend.
        for key, value in _remote_defaults(model).items():
            if lm_kwargs.get(key) is None:
                lm_kwargs[key] = value
        if model.startswith("openai/") and (lm_kwargs.get("api_base") or os.environ.get("OPENAI_API_BASE")):
            # DSPy sends OpenAI's newer `max_completion_tokens`; servers (vLLM, llama.cpp, transformers serve) read
            # the classic `max_tokens`, so the limit goes as that too.
            extra = dict(lm_kwargs.get("extra_body") or {})
            extra.setdefault("max_tokens", lm_kwargs["max_tokens"])
            lm_kwargs["extra_body"] = extra
        lm = dspy.LM(model, **lm_kwargs)
        if key_env:
            lm.api_key_env = key_env  # its name (never the key) for the message of a refused key
        return lm
    if key_env:
        raise ConfigError(f"api_key_env= is for remote LMs; {model!r} runs in-process. Drop --api-key-env.")
    from refine.lm.engine import AsyncLocalEngine, LocalEngine
    from refine.lm.loader import resolve_source

    for key in ("api_key", "api_base", "base_url", "timeout"):
        if key in lm_kwargs:
            raise ConfigError(
                f"{key}= is for remote LMs; {model!r} runs in-process. Drop it, or use openai/<name> with api_base="
            )
    model = _local_model_string(model)
    if model.startswith("local/"):
        resolve_source(model)  # fail now, with a clear message, rather than on the first call
    engine_kwargs = {k: lm_kwargs.pop(k) for k in _ENGINE_KEYS if k in lm_kwargs}
    engine = LocalEngine.shared(**engine_kwargs)
    for key, value in _LOCAL_DEFAULTS.items():
        lm_kwargs.setdefault(key, value)
    return dspy.LM(model, engine=engine, async_engine=AsyncLocalEngine(engine), **lm_kwargs)


def resolve_lm(spec: str | dspy.BaseLM, **lm_kwargs: Any) -> dspy.BaseLM:
    """The LM named by `spec`, configured with `lm_kwargs`: the one resolver behind `--lm`, `--agent`, `--teacher`,
    `--student` and Ray workers' `WorkerLM`.

    Args:
        spec: a `dspy.BaseLM` (returned unchanged; `lm_kwargs` are not applied to it), `py:package.module:attr`
            (an LM object, or a factory called as `attr(**lm_kwargs)`), or a model string (see `get_lm`).
        **lm_kwargs: settings for `get_lm` or the `py:` factory.

    Raises:
        ConfigError: a malformed or unimportable `py:` spec, or one that gives no dspy LM.
        LMError: an empty model string or a missing in-process checkpoint.

    Example:
        >>> resolve_lm("embedded", max_tokens=64).kwargs["max_tokens"]
        64
        >>> resolve_lm("py:nothing")
        Traceback (most recent call last):
        ...
        refine.errors.ConfigError: The LM factory 'py:nothing' must look like 'py:package.module:factory'.
    """
    if isinstance(spec, dspy.BaseLM):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"An LM spec is a string or a dspy LM, not a {type(spec).__name__}.")
    if spec.startswith(PY_PREFIX):
        return load_py_lm(spec, **lm_kwargs)  # type: ignore[no-any-return]
    return get_lm(spec, **lm_kwargs)


def is_remote(spec: str | dspy.BaseLM) -> bool:
    """Whether `spec` is served by a remote provider (LiteLLM), i.e. neither in-process nor a Python object."""
    return isinstance(spec, str) and not spec.startswith(PY_PREFIX) and not is_local_model(spec)


def _remote_defaults(model: str) -> dict[str, Any]:
    """Generation settings sent to remote LMs unless the caller sets them (reasoning models only accept these)."""
    try:
        from dspy.clients.lm import _is_openai_reasoning_model
    except ImportError:  # pragma: no cover - a DSPy without the helper
        return dict(_REMOTE_DEFAULTS)
    return {"max_tokens": 16000, "temperature": 1.0} if _is_openai_reasoning_model(model) else dict(_REMOTE_DEFAULTS)


def _adapter_for(name: str, lm: dspy.LM) -> dspy.Adapter:
    if name == "auto":
        return default_adapter(lm)
    if name == "grammar":
        return GrammarChatAdapter()
    if name == "chat":
        return dspy.ChatAdapter()
    if name == "json":
        return dspy.JSONAdapter()
    raise ConfigError(f"Unknown adapter {name!r}; choose one of {', '.join(ADAPTERS)}")


def configure(model: str | dspy.BaseLM = EMBEDDED, adapter: str = "auto", **lm_kwargs: Any) -> dspy.BaseLM:
    """`dspy.configure(lm=resolve_lm(model, ...), adapter=...)` in one call.

    Args:
        model: an LM spec (see `resolve_lm`).
        adapter: `auto` (GrammarChatAdapter for in-process models, ChatAdapter otherwise), `grammar`, `chat` or `json`.
        **lm_kwargs: passed to `get_lm`.

    Returns:
        The configured LM.

    Raises:
        ConfigError: for an unknown adapter name.
    """
    if adapter not in ADAPTERS:
        raise ConfigError(f"Unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    lm = resolve_lm(model, **lm_kwargs)
    dspy.configure(lm=lm, adapter=_adapter_for(adapter, lm))
    return lm


def configure_cache(directory: str | os.PathLike[str] | None, memory: bool = True) -> None:
    """Point DSPy's LM response cache at a run's own directory (or turn the disk cache off with None).

    Entries are keyed by a hash of the full request (model, messages, settings, grammar), so a resumed run reuses
    its earlier answers and two runs never mix theirs unless the requests are identical.

    Args:
        directory: folder for the disk cache (created if needed), or None for memory-only caching.
        memory: keep the in-memory LRU cache too.
    """
    if directory is None:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=memory)
        return
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the LM cache directory {path}: {exc}") from exc
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=memory, disk_cache_dir=str(path))
