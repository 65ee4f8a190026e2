"""`WorkerLM`: a picklable recipe for an LM (a spec string and a factory), built once per process on first use.

The executor ships it to Ray workers instead of an LM object (in-process engines are not picklable); the default
factory is the one LM-spec resolver, `refine.lm.resolve.resolve_lm` (so `py:` specs work on workers too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from refine.errors import ConfigError, LMError, RefineError
from refine.imports import import_object

__all__ = ["DEFAULT_LM_FACTORY", "WorkerLM"]

DEFAULT_LM_FACTORY = "refine.lm.resolve:resolve_lm"

_LM_CACHE: dict[tuple[str, str, tuple[tuple[str, Any], ...]], Any] = {}
_LM_CACHE_LOCK = threading.Lock()


def _resolve(ref: str) -> Callable[..., Any]:
    obj = import_object(
        ref, "the LM factory", form="package.module:function", hint="Is the module installed on every worker?"
    )
    if not callable(obj):
        raise ConfigError(f"LM factory {ref!r} is not callable.")
    return obj  # type: ignore[no-any-return]


class WorkerLM:
    """A picklable recipe for an LM: a spec string and a factory, built once per process on first use.

    Args:
        spec: what the factory understands, e.g. "embedded", "local/runs/student", "openai/gpt-4o-mini".
        factory: "module:function" (or a picklable callable) called as `factory(spec, **kwargs)`;
            default `refine.lm.resolve:resolve_lm` (every LM spec, `py:` included).
        **kwargs: JSON-like LM settings passed to the factory (temperature, max_tokens, ...). No API keys here:
            workers read them from their environment.

    Example:
        >>> lm = WorkerLM("fake", factory=lambda spec: f"an LM for {spec}")
        >>> lm.get()
        'an LM for fake'
    """

    def __init__(self, spec: str, factory: str | Callable[..., Any] = DEFAULT_LM_FACTORY, **kwargs: Any) -> None:
        if not isinstance(spec, str) or not spec:
            raise ConfigError("WorkerLM needs a non-empty model spec string, e.g. WorkerLM('embedded').")
        self.spec = spec
        self.factory = factory
        self.kwargs = kwargs

    def _cache_key(self) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
        fid = self.factory if isinstance(self.factory, str) else f"{id(self.factory)}"
        return self.spec, fid, tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))

    def get(self) -> Any:
        """The LM of this process (built on the first call, then shared by all threads)."""
        key = self._cache_key()
        with _LM_CACHE_LOCK:
            lm = _LM_CACHE.get(key)
            if lm is None:
                factory = _resolve(self.factory) if isinstance(self.factory, str) else self.factory
                try:
                    lm = factory(self.spec, **self.kwargs)
                except RefineError:
                    raise
                except Exception as exc:  # a broken LM is the run's problem, not one item's
                    raise LMError(f"Cannot build the LM {self.spec!r} with {self.factory!r}: {exc}") from exc
                _LM_CACHE[key] = lm
        return lm

    def __repr__(self) -> str:
        return f"WorkerLM({self.spec!r}, factory={self.factory!r})"
