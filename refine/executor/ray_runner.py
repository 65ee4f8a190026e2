"""The Ray runner: chunks of items as Ray tasks, each worker process appending to its own shard of the run store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from refine.errors import ConfigError, RefineError
from refine.executor.config import RAY_INSTALL_HINT, ExecutorConfig
from refine.executor.items import ItemOutcome, Kinds
from refine.executor.local import run_threads
from refine.store import RunStore, ShardStore

__all__ = ["run_ray"]

logger = logging.getLogger("refine.executor")


_WORKER_STORES: dict[str, ShardStore] = {}
_WORKER_STORES_LOCK = threading.Lock()


def _worker_store(path: str) -> ShardStore:
    import ray

    with _WORKER_STORES_LOCK:
        store = _WORKER_STORES.get(path)
        if store is not None and store.stale():
            # The run directory was deleted and made again since this (long-lived) worker opened it: the old
            # descriptors point at unlinked files, and writing through them would silently lose records.
            store.close()
            store = None
        if store is None:
            # The Ray worker id is unique per process, so each process appends to its own shard files only.
            shard = "w" + ray.get_runtime_context().get_worker_id()[:16]
            store = _WORKER_STORES[path] = ShardStore(path, shard)
        else:
            store.refresh()
        return store


def _ray_chunk(
    path: str, pairs: list[tuple[str, Any]], payload: tuple[Any, Any], kinds: Kinds, threads: int
) -> list[ItemOutcome]:
    """Body of one Ray task: process a chunk of (key, item) pairs through this worker's shard store."""
    work, lm = payload
    store = _worker_store(path)
    outcomes: list[ItemOutcome] = []
    run_threads(pairs, work, store, lm, kinds, threads, store.shard or "", outcomes.append)
    return outcomes


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def run_ray(
    pairs: list[tuple[str, Any]],
    work: Callable[[Any], Any],
    store: RunStore,
    lm: Any,
    kinds: Kinds,
    cfg: ExecutorConfig,
    on_outcome: Callable[[ItemOutcome], None],
) -> int:
    """Run chunks as Ray tasks; returns the number of items in chunks that failed for good (picked up on resume)."""
    from refine.lm.recipe import WorkerLM

    ray = _import_ray()
    if lm is not None and not isinstance(lm, WorkerLM):
        raise ConfigError(
            "With --executor ray the LM must be rebuilt in each worker: pass lm=WorkerLM('<model spec>') "
            "(or the model string) instead of an LM object."
        )
    started = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if cfg.ray_address:
            init["address"] = cfg.ray_address
        else:
            init["num_cpus"] = cfg.workers
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"Cannot start or join the Ray cluster at {cfg.ray_address or 'a new local instance'} ({exc}). "
                "Check --ray-address (e.g. 'auto' on a cluster node, or 'ray://head:10001')."
            ) from None
        started = True
    lost = 0
    in_flight: dict[Any, list[tuple[str, Any]]] = {}
    try:
        task = ray.remote(_ray_chunk).options(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=False)
        payload = ray.put((work, lm))
        size = cfg.chunk_size_for(len(pairs))
        chunks: Iterator[list[tuple[str, Any]]] = (pairs[i : i + size] for i in range(0, len(pairs), size))
        path = str(store.path)
        while True:
            for chunk in chunks:
                in_flight[task.remote(path, chunk, payload, kinds, cfg.threads_per_worker)] = chunk
                # One queued task per worker beyond the running ones, so a worker never waits on this loop.
                if len(in_flight) >= 2 * cfg.workers:
                    break
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            chunk = in_flight.pop(ready[0])
            try:
                outcomes = ray.get(ready[0])
            except RefineError:
                raise  # Ray re-raises the worker's RunStoreError/ConfigError as that type: the run cannot go on
            except ray.exceptions.RayError as exc:
                lost += len(chunk)
                logger.error(
                    "a Ray task failed for good after %d retries (%s); its %d items stay pending for --resume",
                    cfg.max_retries,
                    type(exc).__name__,
                    len(chunk),
                )
                continue
            for outcome in outcomes:
                on_outcome(outcome)
    finally:
        for ref in in_flight:  # only when aborting: don't leave tasks writing into a run that has stopped
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
    return lost
