"""A hard LM budget for optimization runs: count calls and tokens of every LM an optimizer uses, and refuse the
call that could go over `max_calls` or `max_tokens` *before* it is sent.

Each call reserves one call and an upper bound of its tokens (prompt size times the largest tokens-per-byte ratio seen
so far, plus the call's `max_tokens`) under a lock; after the call the reservation is replaced by the usage the engine
reported. So the spend never exceeds the budget as long as the engine honours `max_tokens`, even with many threads.
Cache hits are not charged (the reservation is released), though once the budget is spent every call is
refused before the cache is consulted.

Example:
    >>> from refine.testing import ScriptedLM
    >>> budget = Budget(max_calls=1)
    >>> lm = budget.wrap(ScriptedLM(lambda f, i, m: {"answer": "4"}))
    >>> lm("What is 2+2?")
    ['[[ ## answer ## ]]\\n4\\n\\n[[ ## completed ## ]]']
    >>> try:
    ...     lm("again")
    ... except BudgetExhaustedError as exc:
    ...     print(str(exc).split(".")[0])
    LM budget exhausted: 1/1 calls used
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy

from refine.errors import RefineError
from refine.lm.usage import usage_tokens

__all__ = ["Budget", "BudgetExhaustedError", "Spend"]

_DEFAULT_MAX_OUTPUT = 1024  # completion bound used when neither the call nor the LM sets max_tokens
_MESSAGE_OVERHEAD = 8  # chat-template tokens per message (role markers, separators)


class BudgetExhaustedError(RefineError, RuntimeError):
    """The next LM call could exceed the run's `max_calls`/`max_tokens` budget, so it was not sent."""


@dataclass
class Spend:
    """LM spend so far: calls actually sent (cache hits excluded) and their reported tokens, per role."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_role: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
            "by_role": copy.deepcopy(self.by_role),
        }


class _CallUsage:
    """A per-call stand-in for DSPy's usage tracker: `finalize` calls `add_usage` exactly when a call was sent."""

    def __init__(self) -> None:
        self.sent = False
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def add_usage(self, model: str, usage: dict[str, Any] | None) -> None:
        self.sent = True
        self.entries.append((model, dict(usage or {})))

    def tokens(self) -> tuple[int, int] | None:
        if not any(u for _, u in self.entries):
            return None
        counts = [usage_tokens(u) for _, u in self.entries]
        return sum(p for p, _ in counts), sum(c for _, c in counts)


def _prompt_bytes(prompt: Any, messages: Any) -> tuple[int, int]:
    """(UTF-8 bytes of the text sent, number of messages)."""
    if messages:
        total = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else getattr(m, "content", m)
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
            total += len(str(content or "").encode())
        return total, len(messages)
    return len(str(prompt or "").encode()), 1


class Budget:
    """Calls/tokens budget shared by every LM of a run (task LM, reflection LM, proposer LM).

    Args:
        max_calls: most LM calls to send (None = unlimited).
        max_tokens: most prompt + completion tokens to spend (None = unlimited).
        default_max_output: completion bound for calls with no `max_tokens` setting.
    """

    def __init__(
        self, max_calls: int | None = None, max_tokens: int | None = None, default_max_output: int = _DEFAULT_MAX_OUTPUT
    ) -> None:
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.default_max_output = default_max_output
        self.exhausted = False
        self.refused = 0
        self._spend = Spend()
        self._reserved_calls = 0
        self._reserved_tokens = 0
        # Upper bound of prompt tokens per UTF-8 byte: 1.0 is safe for byte-level tokenizers until calls calibrate it.
        self._ratio = 1.0
        self._calibrated = False
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Spend], None]] = []

    # ------------------------------------------------------------------ public API
    @property
    def spent(self) -> Spend:
        with self._lock:
            return Spend(**{k: copy.deepcopy(v) for k, v in self._spend.__dict__.items()})

    def add_listener(self, fn: Callable[[Spend], None]) -> None:
        """Call `fn(spend)` after every sent LM call (e.g. to advance a progress bar)."""
        self._listeners.append(fn)

    def describe(self) -> str:
        parts = []
        if self.max_calls is not None:
            parts.append(f"{self.max_calls} calls")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens} tokens")
        return " and ".join(parts) or "unlimited"

    def wrap(self, lm: dspy.BaseLM, role: str = "task") -> dspy.BaseLM:
        """A view of `lm` (same engine, history and settings) whose calls go through this budget."""
        if getattr(lm, "_refine_budget", None) is not None:
            lm = lm._refine_base_lm  # type: ignore[attr-defined]
        view = copy.copy(lm)
        view.__class__ = _budgeted_class(type(lm))
        view._refine_budget = self  # type: ignore[attr-defined]
        view._refine_role = role  # type: ignore[attr-defined]
        view._refine_base_lm = lm  # type: ignore[attr-defined]
        return view

    # ------------------------------------------------------------------ reservation
    def _max_output(self, lm: Any, kwargs: dict[str, Any]) -> int:
        value = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
        if value is None:
            lm_kwargs = getattr(lm, "kwargs", {}) or {}
            value = lm_kwargs.get("max_tokens") or lm_kwargs.get("max_completion_tokens")
        return int(value) if value else self.default_max_output

    def reserve(self, lm: Any, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> int:
        """Reserve one call and its token bound, or raise `BudgetExhaustedError`. Returns the reserved tokens."""
        n_bytes, n_msgs = _prompt_bytes(prompt, messages)
        with self._lock:
            bound = math.ceil(n_bytes * self._ratio) + _MESSAGE_OVERHEAD * n_msgs + self._max_output(lm, kwargs)
            if self.exhausted:
                self.refused += 1
                raise BudgetExhaustedError(self._message())
            calls_after = self._spend.calls + self._reserved_calls + 1
            tokens_after = self._spend.tokens + self._reserved_tokens + bound
            over_calls = self.max_calls is not None and calls_after > self.max_calls
            over_tokens = self.max_tokens is not None and tokens_after > self.max_tokens
            if over_calls or over_tokens:
                self.exhausted = True
                self.refused += 1
                raise BudgetExhaustedError(self._message(next_bound=bound if over_tokens else None))
            self._reserved_calls += 1
            self._reserved_tokens += bound
            return bound

    def settle(self, bound: int, usage: _CallUsage, role: str, n_bytes: int) -> None:
        """Replace a reservation by what the call actually used (nothing for a cache hit)."""
        with self._lock:
            self._reserved_calls -= 1
            self._reserved_tokens -= bound
            if not usage.sent:
                return
            tokens = usage.tokens()
            if tokens is None:  # engine reported no usage: charge the reserved bound, conservatively
                p, c = bound, 0
            else:
                p, c = tokens
                if n_bytes > 0 and p > 0:
                    observed = p / n_bytes * 1.25
                    self._ratio = observed if not self._calibrated else max(self._ratio, observed)
                    self._ratio = min(self._ratio, 1.0)
                    self._calibrated = True
            s = self._spend
            s.calls += 1
            s.prompt_tokens += p
            s.completion_tokens += c
            r = s.by_role.setdefault(role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
            r["calls"] += 1
            r["prompt_tokens"] += p
            r["completion_tokens"] += c
            snapshot = Spend(**{k: copy.deepcopy(v) for k, v in s.__dict__.items()})
        for fn in self._listeners:
            fn(snapshot)

    def _message(self, next_bound: int | None = None) -> str:
        s = self._spend
        parts = []
        if self.max_calls is not None:
            parts.append(f"{s.calls}/{self.max_calls} calls used")
        if self.max_tokens is not None:
            extra = f" (the next call may need up to {next_bound})" if next_bound else ""
            parts.append(f"{s.tokens}/{self.max_tokens} tokens used{extra}")
        return "LM budget exhausted: " + "; ".join(parts) + ". Raise --max-calls/--max-tokens or pick a lighter preset."


_CLASSES: dict[type, type] = {}
_CLASSES_LOCK = threading.Lock()


def _budgeted_class(base: type) -> type:
    """A subclass of the LM's own class whose `__call__`/`acall` reserve and settle budget around the real call."""
    with _CLASSES_LOCK:
        if base in _CLASSES:
            return _CLASSES[base]

        class _Budgeted(base):  # type: ignore[misc, valid-type]
            def __deepcopy__(self, memo: dict[int, Any]) -> Any:
                # Copies (lm.copy(), program deep-copies) keep spending from the same budget.
                return self._refine_budget.wrap(copy.deepcopy(self._refine_base_lm, memo), self._refine_role)

            def _budgeted_call(self, call: Callable[[], Any], prompt: Any, messages: Any, kwargs: dict[str, Any]):
                budget: Budget = self._refine_budget
                bound = budget.reserve(self, prompt, messages, kwargs)
                usage = _CallUsage()
                outer = dspy.settings.usage_tracker
                try:
                    with dspy.context(usage_tracker=usage):
                        return call()
                finally:
                    budget.settle(bound, usage, self._refine_role, _prompt_bytes(prompt, messages)[0])
                    if outer is not None:
                        for model, u in usage.entries:
                            outer.add_usage(model, u)

            def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
                return self._budgeted_call(
                    lambda: super(_Budgeted, self).__call__(prompt, messages=messages, **kwargs),
                    prompt,
                    messages,
                    kwargs,
                )

            async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
                budget: Budget = self._refine_budget
                bound = budget.reserve(self, prompt, messages, kwargs)
                usage = _CallUsage()
                try:
                    with dspy.context(usage_tracker=usage):
                        return await super().acall(prompt, messages=messages, **kwargs)
                finally:
                    budget.settle(bound, usage, self._refine_role, _prompt_bytes(prompt, messages)[0])

        _Budgeted.__name__ = _Budgeted.__qualname__ = f"Budgeted{base.__name__}"
        _CLASSES[base] = _Budgeted
        return _Budgeted
