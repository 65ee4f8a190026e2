"""The in-process engine's compute thread: one long-lived thread loads its models and runs every forward pass.

Why one thread: PyTorch's CPU kernels run on OpenMP, and libgomp gives every thread that starts a parallel region its
own pool of helper threads. While the helpers of all those pools outnumber the CPUs, libgomp stops letting idle
helpers spin (its "throttled" wait): every parallel region then wakes them through a futex, which costs more than a
small matmul itself. A model loaded in one thread (the caller's) and run in another (a batcher's) makes two pools;
on the 2-core box a 16 x 576 x 1536 matmul took 0.29 ms (MKL) / 0.26 ms (oneDNN) that way, against 0.20 / 0.125 ms
when one thread did all the work (benchmarks/RESULTS.md, P5 fourth session). So the engine hands its torch work to
this thread and waits for it; callers keep tokenizing and queueing in their own threads.

Work submitted from the compute thread itself runs inline, so nested calls cannot deadlock.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from refine import interrupt

__all__ = ["compute_thread", "run_on_compute_thread", "wait_idle"]

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None
_tasks: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()


def _loop() -> None:
    while True:
        future, fn, args, kwargs = _tasks.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller, who re-raises it
            future.set_exception(exc)


def compute_thread() -> threading.Thread:
    """The compute thread (started on first use; a daemon, so it never holds up interpreter exit)."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="refine-lm-compute", daemon=True)
            _thread.start()
        return _thread


def run_on_compute_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` on the compute thread and return its result (or raise its exception).

    Example:
        >>> import threading
        >>> run_on_compute_thread(lambda: threading.current_thread().name)
        'refine-lm-compute'
    """
    thread = compute_thread()
    if threading.current_thread() is thread:
        return fn(*args, **kwargs)
    future: Future = Future()
    _tasks.put((future, fn, args, kwargs))
    return future.result()


def wait_idle(timeout: float = 60.0) -> bool:
    """Wait until the compute thread has run everything queued before this call; True if it did within `timeout`.

    Called before the interpreter exits after an interrupt (`refine.interrupt.drain`): CPython kills a daemon thread
    that is still inside torch's C++ code at exit with a forced unwind, which aborts the whole process.
    """
    thread = _thread
    if thread is None or not thread.is_alive() or threading.current_thread() is thread:
        return True
    future: Future = Future()
    _tasks.put((future, lambda: None, (), {}))
    try:
        future.result(timeout=timeout)
    except Exception:
        return False
    return True


interrupt.on_drain(wait_idle)  # Ctrl-C waits for this thread before the interpreter exits
