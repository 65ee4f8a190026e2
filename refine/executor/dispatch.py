"""`run_items`: the one entry point of the executor (see `refine.executor` for the guarantees)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from refine import interrupt
from refine.errors import ConfigError
from refine.executor.config import ExecutorConfig
from refine.executor.items import Emit, ItemOutcome, Kinds, RunSummary
from refine.executor.local import run_threads
from refine.store import RunStore

if TYPE_CHECKING:
    from refine.lm.recipe import WorkerLM

__all__ = ["run_items"]

logger = logging.getLogger("refine.executor")


def _key_fn(key: Callable[[Any], str] | str | None) -> Callable[[Any], str]:
    if callable(key):
        return key
    if isinstance(key, str):
        name = key
        return lambda item: str(item[name] if isinstance(item, Mapping) else getattr(item, name))
    return lambda item: str(item["key"] if isinstance(item, Mapping) else item.key)


def run_items(
    items: Iterable[Any],
    work: Callable[[Any], Iterable[Emit | tuple[str, str, Any]]],
    *,
    store: RunStore | str | os.PathLike[str],
    key: Callable[[Any], str] | str | None = None,
    executor: str | ExecutorConfig = "local",
    lm: WorkerLM | str | Any | None = None,
    progress: Callable[[ItemOutcome], None] | None = None,
    done_kind: str = "items",
    error_kind: str = "errors",
    outcome_fields: Iterable[str] = (),
    **options: Any,
) -> RunSummary:
    """Run `work` on every item whose key is not yet in the run store, locally or on Ray.

    Args:
        items: the work list (picklable values for Ray), e.g. persona/seed dicts or episode specs.
        work: `work(item) -> iterable of Emit(kind, key, record)`; must be picklable for Ray (a module-level
            function or an object). Record keys must be deterministic so a redone item adds only what is missing.
            An exception fails the item (recorded in `<error_kind>.jsonl`, retried on resume), not the run.
        store: the run's `RunStore` (its config and manifest are the caller's), or a run directory to open/resume.
        key: the item's stable key: a function, a field name, or None for `item["key"]` / `item.key`.
        executor: "local" or "ray", or a full `ExecutorConfig`.
        lm: the DSPy LM set around each item: a `WorkerLM`, a model spec string (built in each process with
            `refine.lm.resolve_lm`), or (local only) an LM object. None keeps the caller's `dspy.settings.lm`
            (local only: Ray workers do not see the caller's settings).
        progress: called in this process with each item's `ItemOutcome` (for progress bars and counters); with
            Ray the outcomes of a chunk arrive together when its task returns.
        done_kind: where the done-marker of an item goes when none of its records carries the item's key.
        error_kind: where failed attempts are recorded.
        outcome_fields: fields of each item's own record copied into `ItemOutcome.info` (with Ray the progress
            callback sees no records, only outcomes).
        **options: `ExecutorConfig` fields: workers, ray_address, threads_per_worker, chunk_size, max_retries.

    Returns:
        A `RunSummary`; `summary.pending` counts items that are not done (retry them with a resumed run).

    Raises:
        ConfigError: invalid executor options, Ray missing, duplicate item keys, an unusable LM spec.
        RunStoreError: the run directory cannot be written.
    """
    cfg = ExecutorConfig.from_options(executor, **options)
    for kind in (done_kind, error_kind):
        if not kind.isidentifier():
            raise ConfigError(f"Record kind {kind!r} must be an identifier (it names the file {kind}.jsonl).")
    if isinstance(lm, str):
        from refine.lm.recipe import WorkerLM

        lm = WorkerLM(lm)
    key_of = _key_fn(key)
    pairs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        k = key_of(item)
        if not isinstance(k, str) or not k:
            raise ConfigError(f"Item key {k!r} of {item!r} must be a non-empty string.")
        if k in seen:
            raise ConfigError(f"Two items share the key {k!r}; item keys must be unique (add the seed or an index).")
        seen.add(k)
        pairs.append((k, item))

    own_store = not isinstance(store, RunStore)
    run_store: RunStore = store if isinstance(store, RunStore) else RunStore(store, resume=True)
    start = time.perf_counter()
    try:
        pending = [(k, it) for k, it in pairs if not run_store.has(k)]
        counts: Counter[str] = Counter()
        written: Counter[str] = Counter()
        count_lock = threading.Lock()

        def on_outcome(outcome: ItemOutcome) -> None:
            with count_lock:
                counts[outcome.status] += 1
                written.update(outcome.written)
            if progress is not None:
                progress(outcome)

        logger.info(
            "%d items, %d already done, %d to run on %s x%d",
            len(pairs),
            len(pairs) - len(pending),
            len(pending),
            cfg.executor,
            cfg.workers,
        )
        lost = 0
        kinds = Kinds(done_kind, error_kind, tuple(outcome_fields))
        interrupt.clear()
        try:
            if cfg.executor == "local":
                run_threads(pending, work, run_store, lm, kinds, cfg.workers, "local", on_outcome)
            elif pending:
                from refine.executor.ray_runner import run_ray

                lost = run_ray(pending, work, run_store, lm, kinds, cfg, on_outcome)
                run_store.refresh()  # the shards' keys, so `has()` and later appends see the workers' records
        except KeyboardInterrupt:
            interrupt.request()
            interrupt.settle()  # the in-process engine finishes its cut-short batch; later calls run normally
            raise
        not_done = sum(1 for k, _ in pairs if not run_store.has(k))
        return RunSummary(
            total=len(pairs),
            skipped=len(pairs) - len(pending) + counts["skipped"],
            done=counts["done"],
            failed=counts["failed"],
            pending=not_done,
            lost=lost,
            written=dict(written),
            seconds=round(time.perf_counter() - start, 3),
            executor=cfg.executor,
            workers=cfg.workers,
        )
    finally:
        if own_store:
            run_store.close()
