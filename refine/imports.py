"""Import objects named by `package.module:attr` specs, with errors that say which option was wrong and why.

Every place that accepts a "module:attr" option (LM factories, metrics, programs, environments, critics, agent
factories) goes through `import_object`, so all of them parse the same way and fail with one kind of message.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterable, Iterator
from typing import Any

from refine.errors import ConfigError

__all__ = ["PY_PREFIX", "import_object", "load_py_lm", "only_trusted_imports"]

# LM specs starting with this name a Python object instead of a model: `py:package.module:factory`.
PY_PREFIX = "py:"

# While a file written by a run (report.json, a manifest) is being turned back into objects, only these targets may
# be imported: (allowed targets, what the file is, how to trust more). None: no restriction (specs the user typed).
_TRUSTED: contextvars.ContextVar[tuple[frozenset[str], str, str] | None] = contextvars.ContextVar(
    "refine_trusted_imports", default=None
)


@contextlib.contextmanager
def only_trusted_imports(allowed: Iterable[str], source: str, hint: str = "") -> Iterator[None]:
    """Within this block `import_object` imports only the `allowed` targets (and nothing named by `source`).

    Artifacts are data: a saved program's `report.json` names the program to rebuild and its options, and an option
    such as `stop_rule="os:system"` would otherwise be imported and called. Loaders wrap the rebuild in this block
    with this project's own programs (plus what the user passed for this run) as `allowed`.

    Example:
        >>> with only_trusted_imports({"fractions:Fraction"}, "report.json"):
        ...     import_object("os:system", "program")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        refine.errors.ConfigError: report.json names program 'os:system', which is not one of this project's ...
    """
    token = _TRUSTED.set((frozenset(allowed), source, hint))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_object(
    target: str, what: str, *, form: str = "package.module:attr", hint: str = "", prefix: str = ""
) -> Any:
    """Import the object named by `target`, a `package.module:attr` spec; attr may be dotted (`pkg.mod:Cls.method`).

    Any exception raised while importing the module or reading the attribute becomes a `ConfigError`: a user module
    may fail in any way (ImportError, AttributeError, SyntaxError, its own errors at import time), and each of them
    means the option cannot be used. The original exception stays attached as `__cause__`.

    Args:
        target: the spec as the user gave it.
        what: what the object is for, as a noun phrase that starts the messages ("metric", "the LM factory").
        form: the expected shape, shown when `target` is malformed.
        hint: a sentence appended to import failures (e.g. "Is the module installed on every worker?").
        prefix: a scheme `target` must start with (e.g. "py:"); it is stripped before parsing, but messages show the
            whole target and `prefix + form`.

    Returns:
        The object; callers check its kind (callable, an LM, a graph) themselves.

    Raises:
        ConfigError: `target` is malformed, or the module or attribute cannot be imported. The message names
            `what`, the target and the underlying error (type and text).

    Example:
        >>> import_object("fractions:Fraction.from_float", "a parser")(0.5)
        Fraction(1, 2)
        >>> import_object("json", "metric")
        Traceback (most recent call last):
        ...
        refine.errors.ConfigError: Metric 'json' must look like 'package.module:attr'.
        >>> import_object("json:no", "metric")
        Traceback (most recent call last):
        ...
        refine.errors.ConfigError: Cannot import metric 'json:no': AttributeError: module 'json' has no attribute 'no'
    """
    spec = target[len(prefix) :] if isinstance(target, str) and target.startswith(prefix) else None
    module, sep, attr = spec.partition(":") if spec is not None else ("", "", "")
    if not sep or not all(module.split(".")) or not all(attr.split(".")):
        raise ConfigError(f"{what[:1].upper()}{what[1:]} {target!r} must look like {prefix + form!r}.")
    trusted = _TRUSTED.get()
    if trusted is not None and target not in trusted[0] and spec not in trusted[0]:
        message = (
            f"{trusted[1]} names {what} {target!r}, which is not one of this project's programs; "
            "refine never imports code named by a file."
        )
        raise ConfigError(f"{message} {trusted[2]}".rstrip())
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a user module may fail to import in any way: all of them make the option unusable
        message = f"Cannot import {what} {target!r}: {_describe(exc)}"
        if hint:
            message = f"{message.rstrip('.')}. {hint}"
        raise ConfigError(message) from exc
    return obj


def load_py_lm(spec: str, **kwargs: Any) -> Any:
    """The LM named by a `py:package.module:attr` spec (e.g. a fake LM for tests).

    attr is either a `dspy.BaseLM`, returned as is, or a factory called as `attr(**kwargs)` that returns one. A
    factory gets the settings its signature names (all of them if it takes `**kwargs`): commands pass their decoding
    defaults (`max_tokens`, `temperature`) to every LM, and a fake LM's factory need not accept them.

    Raises:
        ConfigError: the spec is malformed or cannot be imported, or it does not give a dspy LM.
    """
    obj = import_object(spec, "the LM factory", form="package.module:factory", prefix=PY_PREFIX)
    import dspy

    if isinstance(obj, dspy.BaseLM):
        return obj
    if not callable(obj):
        raise ConfigError(f"LM spec {spec!r} names a {type(obj).__name__}, not a dspy LM or a factory of one.")
    lm = obj(**_accepted(obj, kwargs))
    if not isinstance(lm, dspy.BaseLM):
        raise ConfigError(f"LM spec {spec!r} gave a {type(lm).__name__}, not a dspy LM.")
    return lm


def _accepted(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `kwargs` that `factory` takes (all of them when it takes **kwargs or has no
    readable signature)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}
