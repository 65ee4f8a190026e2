"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: a process-wide stop flag, signal handlers, and a drain.

A signal sets the stop flag and raises `Interrupted` (a `KeyboardInterrupt`) in the main thread. The executor then
submits no new item and abandons in-flight ones without writing them (they are redone on resume), the in-process
engine ends its current `generate()` at the next token, and the run store marks the manifest `interrupted`.
`drain()` waits until the LM compute thread is idle: a daemon thread still inside torch's C++ code when the
interpreter exits is killed by CPython with a forced unwind, which aborts the process (`terminate called without an
active exception`, exit 134).

Example:
    >>> from refine import interrupt
    >>> interrupt.requested()
    False
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "Interrupted",
    "clear",
    "drain",
    "handle_signals",
    "last_signal",
    "on_drain",
    "request",
    "requested",
    "settle",
]

_stop = threading.Event()
_signum: list[int] = []
_drains: list[Callable[[float], bool]] = []  # see on_drain


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT/SIGTERM (and by work abandoned after a stop request)."""

    def __init__(self, signum: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name if signum else "interrupted")
        self.signum = signum


def requested() -> bool:
    """Whether a stop was requested (a signal arrived, or a run was interrupted) since the last `clear()`."""
    return _stop.is_set()


def request(signum: int | None = None) -> None:
    """Ask every running item to stop: the executor abandons them, the in-process engine stops generating."""
    if signum is not None:
        _signum.append(signum)
    _stop.set()


def last_signal() -> int | None:
    """The signal number of the latest stop request made by a signal (None if none)."""
    return _signum[-1] if _signum else None


def clear() -> None:
    """Forget an earlier stop request (at the start of a new run)."""
    _stop.clear()
    _signum.clear()


def _handler(signum: int, frame: Any) -> None:
    if _signum:
        # A second signal: the user insists. Leave at once, skipping interpreter teardown (no native abort either).
        sys.stderr.write("\nStopping now (second signal); unfinished items are redone on --resume.\n")
        sys.stderr.flush()
        os._exit(130 if signum == signal.SIGINT else 128 + signum)
    request(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread (the second one exits at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def settle(timeout: float = 60.0) -> None:
    """After an interrupted run: wait for the compute thread (`drain`), then lower the stop flag, so LM calls made
    later in this process (a notebook, the next run) generate normally. The signal number stays for `last_signal`."""
    drain(timeout)
    _stop.clear()


def on_drain(wait: Callable[[float], bool]) -> None:
    """Register what `drain` waits for: `wait(timeout)` returns True once idle. The in-process LM compute thread
    (`refine.lm.compute`) registers itself when it is imported, so this module needs to know nothing of the LMs."""
    if wait not in _drains:
        _drains.append(wait)


def drain(timeout: float = 60.0) -> bool:
    """Wait (at most `timeout` s) until the in-process LM compute thread has finished what it was running.

    Returns True when it is idle (or was never started). Cheap when no in-process model was used.
    """
    return all([wait(timeout) for wait in list(_drains)])
