"""Map a work function over keyed items with the run store's guarantees, on local threads or on a Ray cluster.

Synthesis and evaluation both boil down to "for each item (a persona and seed, an episode), call LMs and write a
few records". `run_items` runs that loop so that a killed or restarted run neither loses nor duplicates work:

* every item has a stable key; an item is *done* once a record with that key is in the run store, so a resumed
  run skips it;
* `work(item)` returns `Emit(kind, key, record)` values; the executor writes them through `refine.store.RunStore`
  (records whose key is already stored are not written again) and writes the item's own key last, so an item
  interrupted half-way is redone on resume and only its missing records are added;
* `executor="local"` (default) runs items on a thread pool of the calling process, writing through the caller's
  store; `executor="ray"` ships chunks of items to Ray tasks, each writing its own shard file
  (`<kind>.<shard>.jsonl`) so no two processes append to one file; readers merge shards and drop repeated keys.
  A Ray worker that dies mid-chunk is retried by Ray (`max_retries`); the retry sees what the dead attempt wrote.

LMs with an in-process engine are not picklable, so a Ray worker builds its own LM from a spec string:
`WorkerLM("embedded")` (through `refine.lm.get_lm`) or `WorkerLM(spec, factory="module:function")`. The LM is
built once per process and set as the DSPy LM (`dspy.context(lm=...)`) around every item.

Example:
    >>> import tempfile
    >>> def square(n):
    ...     return [Emit("results", f"n{n}", {"n": n, "square": n * n})]
    >>> run = tempfile.mkdtemp() + "/run"
    >>> summary = run_items(range(4), square, store=run, key=lambda n: f"n{n}", workers=2)
    >>> summary.done, summary.pending
    (4, 0)
    >>> run_items(range(5), square, store=run, key=lambda n: f"n{n}").skipped  # resumed: only n4 is new
    4
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refine import interrupt
from refine.errors import ConfigError, LMError, RefineError, RunStoreError
from refine.imports import import_object
from refine.store import RunStore

__all__ = [
    "Emit",
    "ExecutorConfig",
    "ExecutorOption",
    "ItemOutcome",
    "RayAddressOption",
    "RunSummary",
    "WorkerLM",
    "run_items",
]

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install 'dspy-refine[ray]'"
DEFAULT_LM_FACTORY = "refine.lm:get_lm"


# ---------------------------------------------------------------------------------------------------------- config
class ExecutorConfig(BaseModel):
    """Where and how widely `run_items` runs. One class for the Python API and the CLI options.

    Example:
        >>> ExecutorConfig(executor="ray", workers=8).chunk_size_for(1000)
        32
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: Literal["local", "ray"] = Field(
        "local", description="local: a thread pool in this process (default). ray: Ray tasks on a Ray cluster."
    )
    workers: int = Field(
        4,
        ge=1,
        description="local: threads. ray: Ray tasks running at once (and the CPUs of a Ray instance started here).",
    )
    ray_address: str | None = Field(
        None, description="Address of a running Ray cluster ('auto', 'ray://host:10001'); none starts one locally."
    )
    threads_per_worker: int = Field(
        1, ge=1, description="ray: threads inside each Ray task (raise it when each item waits on a remote LM API)."
    )
    chunk_size: int | None = Field(
        None, ge=1, description="ray: items per Ray task; default about 4 chunks per worker, at most 64 per thread."
    )
    max_retries: int = Field(3, ge=0, description="ray: times a task is re-run after its worker process died.")

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutorConfig:
        if self.ray_address and self.executor != "ray":
            raise ValueError("ray_address (--ray-address) only applies with executor='ray' (--executor ray)")
        return self

    @classmethod
    def from_options(cls, executor: str | ExecutorConfig = "local", **options: Any) -> ExecutorConfig:
        """Build a config from CLI/API options, turning validation errors into a `ConfigError` that says the fix."""
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(executor, ExecutorConfig):
            if not given:
                return executor
            given = {**executor.model_dump(), **given}
        else:
            given["executor"] = executor
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"Invalid executor settings ({problems}). Use --executor local|ray, --workers N (>= 1), "
                "and --ray-address only together with --executor ray."
            ) from None

    def chunk_size_for(self, n_items: int) -> int:
        """Items per Ray task: small enough to spread over the workers and to lose little to a dead worker."""
        if self.chunk_size:
            return self.chunk_size
        t = self.threads_per_worker
        size = max(t, min(64 * t, math.ceil(n_items / (self.workers * 4))))
        return math.ceil(size / t) * t  # whole rounds of the task's threads: no thread idles at a chunk's end


# Typer option types shared by `refine synth` and `refine eval` (one source of help text).
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="local (threads in this process, default) or ray (Ray tasks).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster to join ('auto', 'ray://head:10001'); default: start one here."),
]


# ---------------------------------------------------------------------------------------------------------- data
class Emit(NamedTuple):
    """One record produced by a work function: written to `<kind>.jsonl` under `key` (keys must be deterministic)."""

    kind: str
    key: str
    record: Mapping[str, Any] | Any


@dataclass
class ItemOutcome:
    """What happened to one item; `progress` callbacks receive these in the calling process.

    `info` holds the `outcome_fields` of the item's own record (e.g. `success`), for progress displays.
    """

    key: str
    status: Literal["done", "skipped", "failed"]
    written: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """Totals of one `run_items` call. `pending` items are not done (failed or lost) and are retried on resume."""

    total: int
    skipped: int
    done: int
    failed: int
    pending: int
    lost: int
    written: dict[str, int]
    seconds: float
    executor: str
    workers: int

    @property
    def ok(self) -> bool:
        return self.pending == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------- LMs
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
            default `refine.lm:get_lm`.
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


def _lm_context(lm: Any) -> contextlib.AbstractContextManager[Any]:
    if lm is None:
        return contextlib.nullcontext()
    import dspy

    return dspy.context(lm=lm)


# ---------------------------------------------------------------------------------------------------------- items
class _Kinds(NamedTuple):
    done: str
    error: str
    fields: tuple[str, ...] = ()


def _emits(out: Any, item_key: str) -> list[Emit]:
    if out is None:
        raise TypeError("the work function returned None; return a list of Emit(kind, key, record) (may be empty)")
    result = []
    for e in out:
        if not isinstance(e, Emit):
            if not (isinstance(e, tuple) and len(e) == 3):
                raise TypeError(f"the work function yielded {type(e).__name__}; expected Emit(kind, key, record)")
            e = Emit(*e)
        if not isinstance(e.kind, str) or not e.kind.isidentifier():
            raise TypeError(f"record kind {e.kind!r} must be an identifier (it names the file <kind>.jsonl)")
        if not isinstance(e.key, str) or not e.key:
            raise TypeError(f"record key {e.key!r} must be a non-empty string")
        result.append(e)
    keys = [e.key for e in result]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise TypeError(f"two records of item {item_key!r} share the key {dup!r}; give each record its own key")
    return result


def _process_item(
    store: RunStore, key: str, item: Any, work: Callable[[Any], Any], lm: Any, kinds: _Kinds, worker: str
) -> ItemOutcome:
    done_kind, error_kind, fields = kinds
    if store.has(key):
        return ItemOutcome(key, "skipped", worker=worker)
    if interrupt.requested():  # stopping: start nothing new (the item stays pending for --resume)
        raise interrupt.Interrupted()
    start = time.perf_counter()
    the_lm = lm.get() if isinstance(lm, WorkerLM) else lm  # outside the try: a broken LM stops the run
    try:
        with _lm_context(the_lm):
            emitted = _emits(work(item), key)
    except RefineError as exc:
        if interrupt.requested():
            raise interrupt.Interrupted() from exc
        if isinstance(exc, RunStoreError | ConfigError):
            raise  # the run itself is misconfigured or cannot write: stop instead of failing every item
        return _failed(store, key, exc, error_kind, worker, start)
    except Exception as exc:
        if interrupt.requested():
            raise interrupt.Interrupted() from exc
        return _failed(store, key, exc, error_kind, worker, start)
    if interrupt.requested():
        # Finished while stopping: its LM calls may have been cut short, so nothing of it is written (redone on resume).
        raise interrupt.Interrupted()
    written: Counter[str] = Counter()
    final = [e for e in emitted if e.key == key]
    info: dict[str, Any] = {}
    if final and fields:
        body = final[0].record
        body = body if isinstance(body, Mapping) else getattr(body, "model_dump", dict)()
        info = {f: body[f] for f in fields if f in body}
    for e in [e for e in emitted if e.key != key]:
        if store.append(e.kind, e.record, e.key):
            written[e.kind] += 1
    # The item's own key goes last: it marks the item done, so nothing of it may be missing once it is there.
    if final:
        if store.append(final[0].kind, final[0].record, key):
            written[final[0].kind] += 1
    elif store.append(done_kind, {"records": [e.key for e in emitted], "worker": worker}, key):
        written[done_kind] += 1
    return ItemOutcome(key, "done", dict(written), seconds=time.perf_counter() - start, worker=worker, info=info)


def _failed(store: RunStore, key: str, exc: BaseException, error_kind: str, worker: str, start: float) -> ItemOutcome:
    message = f"{type(exc).__name__}: {exc}"
    logger.warning("item %s failed: %s", key, message)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    # A fresh key per failure: the item stays not-done (retried on resume) and every failed attempt is on record.
    store.append(
        error_kind,
        {"item": key, "error": message, "traceback": tb, "worker": worker},
        f"{key}!error-{uuid.uuid4().hex[:12]}",
    )
    return ItemOutcome(key, "failed", {error_kind: 1}, message, time.perf_counter() - start, worker)


def _run_threads(
    pairs: list[tuple[str, Any]],
    work: Callable[[Any], Any],
    store: RunStore,
    lm: Any,
    kinds: _Kinds,
    threads: int,
    worker: str,
    on_outcome: Callable[[ItemOutcome], None],
) -> None:
    if threads == 1 or len(pairs) <= 1:
        for key, item in pairs:
            on_outcome(_process_item(store, key, item, work, lm, kinds, worker))
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
                    running.add(pool.submit(ctx.run, _process_item, store, key, item, work, lm, kinds, worker))
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


# ---------------------------------------------------------------------------------------------------------- ray
class _ShardStore(RunStore):
    """A Ray worker's shard store, kept across the tasks of one worker process.

    Before each task it calls `refresh()`, which reads only what was appended since (`RunStore` keeps per-file
    offsets), so a retried task sees what a dead attempt wrote without re-reading the whole run.
    """

    def __init__(self, path: str, shard: str) -> None:
        if not (Path(path) / "manifest.json").exists():
            import socket

            # Without this check the worker would start a new, private run on its own disk: silently lost work.
            raise RunStoreError(
                f"The run directory {path} is not visible on Ray node {socket.gethostname()}. With a multi-node "
                "cluster put --out on a file system that every node mounts at the same path (NFS, Lustre, EFS)."
            )
        super().__init__(path, shard=shard)  # indexes every file; later `refresh()` calls read only new bytes

    def stale(self) -> bool:
        """True when the run directory was deleted (and maybe made again) since this store opened it.

        The store holds its shard's lock file open; once the directory is gone that file has no links left (a
        check on inode numbers would not do: a new directory often gets the old inode back).
        """
        f = self._lockfile
        try:
            return f is None or os.fstat(f.fileno()).st_nlink == 0
        except (OSError, ValueError):
            return True


_WORKER_STORES: dict[str, _ShardStore] = {}
_WORKER_STORES_LOCK = threading.Lock()


def _worker_store(path: str) -> _ShardStore:
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
            store = _WORKER_STORES[path] = _ShardStore(path, shard)
        else:
            store.refresh()
        return store


def _ray_chunk(
    path: str, pairs: list[tuple[str, Any]], payload: tuple[Any, Any], kinds: _Kinds, threads: int
) -> list[ItemOutcome]:
    """Body of one Ray task: process a chunk of (key, item) pairs through this worker's shard store."""
    work, lm = payload
    store = _worker_store(path)
    outcomes: list[ItemOutcome] = []
    _run_threads(pairs, work, store, lm, kinds, threads, store.shard or "", outcomes.append)
    return outcomes


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def _run_ray(
    pairs: list[tuple[str, Any]],
    work: Callable[[Any], Any],
    store: RunStore,
    lm: Any,
    kinds: _Kinds,
    cfg: ExecutorConfig,
    on_outcome: Callable[[ItemOutcome], None],
) -> int:
    """Run chunks as Ray tasks; returns the number of items in chunks that failed for good (picked up on resume)."""
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


# ---------------------------------------------------------------------------------------------------------- API
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
            `refine.lm.get_lm`), or (local only) an LM object. None keeps the caller's `dspy.settings.lm`
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
        kinds = _Kinds(done_kind, error_kind, tuple(outcome_fields))
        interrupt.clear()
        try:
            if cfg.executor == "local":
                _run_threads(pending, work, run_store, lm, kinds, cfg.workers, "local", on_outcome)
            elif pending:
                lost = _run_ray(pending, work, run_store, lm, kinds, cfg, on_outcome)
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
