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

from typing import Any

from refine.executor.config import RAY_INSTALL_HINT, ExecutorConfig, ExecutorOption, RayAddressOption
from refine.executor.dispatch import run_items
from refine.executor.items import Emit, ItemOutcome, RunSummary

__all__ = [
    "RAY_INSTALL_HINT",
    "Emit",
    "ExecutorConfig",
    "ExecutorOption",
    "ItemOutcome",
    "RayAddressOption",
    "RunSummary",
    "WorkerLM",
    "run_items",
]


def __getattr__(name: str) -> Any:
    # `WorkerLM` lives beside the LM resolver (refine.lm imports DSPy): loaded on first use, so the CLI stays fast.
    if name in ("WorkerLM", "DEFAULT_LM_FACTORY"):
        from refine.lm import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'refine.executor' has no attribute {name!r}")
