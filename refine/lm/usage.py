"""Counting LM usage: calls, failures and retries per model (a DSPy callback), tokens per model (DSPy's own usage
tracker, told about every call as it ends), and one reader for the token counts providers report.

`ItemUsage` is what a synthesis item installs around its program: `dspy.context(usage_tracker=usage.tracker,
callbacks=[..., usage.counter])`. `usage.by_model()` then gives the item's record usage, also for an item whose
program crashed, and `on_call` hears about each LM call the moment it ends (a progress bar's tokens).

Example:
    >>> usage_tokens({"input_tokens": 12, "output_tokens": 3})
    (12, 3)
    >>> usage_tokens({"prompt_tokens": 5, "completion_tokens": None})
    (5, 0)
"""

from __future__ import annotations

import contextvars
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from dspy.utils.callback import BaseCallback
from dspy.utils.usage_tracker import UsageTracker

__all__ = ["CallCounter", "ItemUsage", "LiveUsageTracker", "install_retry_hook", "usage_tokens"]

CallListener = Callable[[int, int], None]  # (tokens of the call, 1 per finished call)


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens of one usage entry, whichever names the provider used (prompt_tokens /
    input_tokens, completion_tokens / output_tokens); missing or null counts are 0."""
    u = usage or {}
    prompt = u.get("prompt_tokens") or u.get("input_tokens") or 0
    completion = u.get("completion_tokens") or u.get("output_tokens") or 0
    return int(prompt), int(completion)


class LiveUsageTracker(UsageTracker):
    """DSPy's usage tracker, also calling `listener(tokens)` for each entry it records (a call that was sent)."""

    def __init__(self, listener: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._listener = listener
        self._lock = threading.Lock()

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        with self._lock:
            super().add_usage(lm, usage_entry)
        if self._listener is not None and usage_entry:
            self._listener(sum(usage_tokens(usage_entry)))


class CallCounter(BaseCallback):
    """A DSPy callback counting LM calls (and failed calls) per model, the exceptions of the failed ones, and the
    retries DSPy made inside a call (`install_retry_hook`)."""

    def __init__(self, on_end: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.calls: dict[str, int] = defaultdict(int)
        self.failures: dict[str, int] = defaultdict(int)
        self.retried: dict[str, int] = defaultdict(int)
        self.errors: list[BaseException] = []
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()
        self._on_end = on_end

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self._models[call_id] = str(getattr(instance, "model", "lm"))

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            model = self._models.pop(call_id, "lm")
            self.calls[model] += 1
            if exception is not None:
                self.failures[model] += 1
                self.errors.append(exception)
        if self._on_end is not None:
            self._on_end()

    def on_retry(self, model: str) -> None:
        with self._lock:
            self.retried[model] += 1


class ItemUsage:
    """The usage of one unit of work (a synthesis item): its call counter and its token tracker together.

    Args:
        on_call: `on_call(tokens, calls)` as each LM call ends: the call's tokens when the engine reported them
            (a cache hit reports none), and 1 when the call itself finished.
    """

    def __init__(self, on_call: CallListener | None = None) -> None:
        self._on_call = on_call
        self.tracker = LiveUsageTracker(self._tokens if on_call is not None else None)
        self.counter = CallCounter(self._ended if on_call is not None else None)

    def _tokens(self, n: int) -> None:
        if self._on_call is not None:
            self._on_call(n, 0)

    def _ended(self) -> None:
        if self._on_call is not None:
            self._on_call(0, 1)

    @property
    def calls(self) -> int:
        return sum(self.counter.calls.values())

    def by_model(self) -> dict[str, dict[str, int]]:
        """Per model: prompt/completion tokens, calls, and failed/retried calls where there were any."""
        usage: dict[str, dict[str, int]] = {}
        for model, total in self.tracker.get_total_tokens().items():
            p, c = usage_tokens(total)
            usage[model] = {"prompt_tokens": p, "completion_tokens": c}
        counter = self.counter
        for model, n in counter.calls.items():
            usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0})["calls"] = n
            if counter.failures.get(model):
                usage[model]["failed_calls"] = counter.failures[model]
        retried = sum(counter.retried.values())
        if retried:  # DSPy's exceptions rarely name the model: the retries go to the item's (first) model
            model = next(iter(usage), "lm")
            usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0})["retried_calls"] = retried
        return usage


# The counter of the work running in this context: DSPy's retry loop (below the callbacks) reports each retry to it.
CURRENT_COUNTER: contextvars.ContextVar[CallCounter | None] = contextvars.ContextVar(
    "refine_call_counter", default=None
)
_RETRY_HOOK_LOCK = threading.Lock()


def install_retry_hook() -> None:
    """Count the retries DSPy makes inside one LM call (rate limits, 5xx, timeouts), which no callback sees.

    DSPy 3.4 sleeps `_delay(exc, attempt)` seconds before each retry; wrapping it is the only place a retry shows.
    The retry goes to the `CallCounter` in `CURRENT_COUNTER`. Without the hook (another DSPy version) retries are
    simply not counted.
    """
    try:
        from dspy.clients import execution
    except ImportError:  # pragma: no cover
        return
    with _RETRY_HOOK_LOCK:
        original = getattr(execution, "_delay", None)
        if original is None or getattr(original, "_refine_hook", False):
            return

        def _delay(exc: Any, attempt: int) -> Any:
            counter = CURRENT_COUNTER.get()
            if counter is not None:
                counter.on_retry(str(getattr(exc, "model", "") or "lm"))
            return original(exc, attempt)

        _delay._refine_hook = True  # type: ignore[attr-defined]
        execution._delay = _delay
