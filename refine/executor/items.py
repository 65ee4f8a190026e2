"""One item's life in `run_items`: call the work function under the item's LM, write its records, key last.

Shared by the local runner (`refine.executor.local`) and the Ray runner (`refine.executor.ray_runner`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from refine import interrupt
from refine.errors import ConfigError, RefineError, RunFailedError, RunStoreError
from refine.store import RunStore

__all__ = ["Emit", "ItemOutcome", "Kinds", "RunSummary", "process_item"]

logger = logging.getLogger("refine.executor")


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


def _lm_context(lm: Any) -> contextlib.AbstractContextManager[Any]:
    if lm is None:
        return contextlib.nullcontext()
    import dspy

    return dspy.context(lm=lm)


# ---------------------------------------------------------------------------------------------------------- items
class Kinds(NamedTuple):
    """Where an item's done-marker and failures go, and which fields of its record reach `ItemOutcome.info`."""

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


def process_item(
    store: RunStore, key: str, item: Any, work: Callable[[Any], Any], lm: Any, kinds: Kinds, worker: str
) -> ItemOutcome:
    done_kind, error_kind, fields = kinds
    if store.has(key):
        return ItemOutcome(key, "skipped", worker=worker)
    if interrupt.requested():  # stopping: start nothing new (the item stays pending for --resume)
        raise interrupt.Interrupted()
    start = time.perf_counter()
    from refine.lm.recipe import WorkerLM

    the_lm = lm.get() if isinstance(lm, WorkerLM) else lm  # outside the try: a broken LM stops the run
    try:
        with _lm_context(the_lm):
            emitted = _emits(work(item), key)
    except RefineError as exc:
        if interrupt.requested():
            raise interrupt.Interrupted() from exc
        if isinstance(exc, RunStoreError | ConfigError | RunFailedError):
            raise  # the run itself is misconfigured, cannot write or cannot go on (a refused key): stop
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
