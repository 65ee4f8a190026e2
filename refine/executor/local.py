"""The local runner: items on a bounded thread pool of the calling process, writing through the caller's store."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from refine import interrupt
from refine.executor.items import ItemOutcome, Kinds, process_item
from refine.store import RunStore

__all__ = ["run_threads"]


def run_threads(
    pairs: list[tuple[str, Any]],
    work: Callable[[Any], Any],
    store: RunStore,
    lm: Any,
    kinds: Kinds,
    threads: int,
    worker: str,
    on_outcome: Callable[[ItemOutcome], None],
) -> None:
    """Process `pairs` on `threads` threads (inline for one), handing each `ItemOutcome` to `on_outcome`."""
    if threads == 1 or len(pairs) <= 1:
        for key, item in pairs:
            on_outcome(process_item(store, key, item, work, lm, kinds, worker))
        return
    # Each item runs in a copy of the caller's context, so `dspy.context(...)` settings reach the pool's threads.
    it = iter(pairs)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refine-item") as pool:
        running = set()
        try:
            while True:
                # A bounded window instead of submitting everything: memory stays flat for 100k-item runs.
                for key, item in it:
                    ctx = contextvars.copy_context()
                    running.add(pool.submit(ctx.run, process_item, store, key, item, work, lm, kinds, worker))
                    if len(running) >= threads * 2:
                        break
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    on_outcome(fut.result())
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM: queued items never start, running ones are abandoned at their next LM call (the
            # in-process engine stops generating); the pool's exit then waits only for those to return.
            interrupt.request()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:  # the run cannot go on (a refused key, a store that cannot write): start nothing queued
            pool.shutdown(wait=True, cancel_futures=True)
            raise
