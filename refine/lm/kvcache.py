"""Automatic prefix caching for the in-process engine: reuse the KV cache of any earlier prompt's prefix.

An agent's turn `t + 1` prompt is its turn `t` prompt, plus its answer, plus the new observation. Re-running the
whole history through the model every turn (prefill) is what dominates multi-turn episodes on a CPU, so after each
`generate()` the engine keeps every row's KV cache (prompt + generated tokens) here, and the next request starts from
the longest cached prefix of its prompt: only the new tokens are computed. A cache whose tokens are a prefix of a
newer one is dropped (an episode keeps one entry, its latest turn), and the least recently used entries go first when
the memory budget is exceeded.

Entries hold per-layer `(keys, values)` tensors of shape `[heads, tokens, head_dim]` (one sequence, no batch axis).
The store is not thread-safe: the engine uses it under the model's lock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KVEntry", "PrefixKVStore"]


@dataclass
class KVEntry:
    """The KV cache of one token sequence: `layers[i] = (keys, values)`, each `[heads, len(tokens), head_dim]`."""

    tokens: np.ndarray
    layers: list[tuple[Any, Any]]
    nbytes: int = 0

    def __post_init__(self) -> None:
        if not self.nbytes:
            self.nbytes = sum(t.numel() * t.element_size() for pair in self.layers for t in pair)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two 1-D token arrays.

    Example:
        >>> common_prefix(np.array([1, 2, 3, 4]), np.array([1, 2, 9]))
        2
    """
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass
class PrefixKVStore:
    """LRU store of KV caches keyed by token sequences, looked up by longest common prefix.

    Args:
        max_entries: most sequences kept (0 disables caching).
        max_bytes: most memory held by the cached tensors (a token costs `layers x 2 x kv_heads x head_dim` values:
            46 kB for SmolLM2-135M in float32, so the default 2 GiB holds about 46k tokens).

    Example:
        >>> import torch
        >>> store = PrefixKVStore(max_entries=4, max_bytes=10_000)
        >>> kv = [(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2))]
        >>> store.put([1, 2, 3, 4, 5], kv)
        >>> n, entry = store.lookup([1, 2, 3, 7], limit=3)
        >>> n, len(entry)
        (3, 5)
    """

    max_entries: int = 64
    max_bytes: int = 2 << 30
    hits: int = 0
    reused_tokens: int = 0
    _entries: collections.OrderedDict[int, KVEntry] = field(default_factory=collections.OrderedDict)
    _ids: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        """Tokens held over all entries."""
        return sum(len(e) for e in self._entries.values())

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, prompt: list[int] | np.ndarray, limit: int) -> tuple[int, KVEntry | None]:
        """The longest cached prefix of `prompt`, at most `limit` tokens: `(length, entry)`, or `(0, None)`."""
        if self.max_entries <= 0 or limit <= 0 or not self._entries:
            return 0, None
        query = np.asarray(prompt, dtype=np.int64)
        best, best_id = 0, None
        for key, entry in self._entries.items():
            n = common_prefix(entry.tokens, query)
            if n > best:
                best, best_id = n, key
        if best_id is None:
            return 0, None
        self._entries.move_to_end(best_id)
        length = min(best, limit)
        self.hits += 1
        self.reused_tokens += length
        return length, self._entries[best_id]

    def put(self, tokens: list[int] | np.ndarray, layers: list[tuple[Any, Any]]) -> None:
        """Keep the KV cache of `tokens` (dropping entries it extends), then trim to the budgets."""
        entry = KVEntry(np.asarray(tokens, dtype=np.int64), layers)
        if self.max_entries <= 0 or len(entry) == 0 or entry.nbytes > self.max_bytes:
            return
        n = len(entry)
        for old_id, old in list(self._entries.items()):
            m = len(old)
            if m <= n and common_prefix(old.tokens, entry.tokens) == m:
                del self._entries[old_id]  # a prefix of the new entry: it answers nothing the new one does not
            elif m > n and common_prefix(old.tokens, entry.tokens) == n:
                self._entries.move_to_end(old_id)  # the new one is a prefix of a cached one: nothing to add
                return
        self._ids += 1
        self._entries[self._ids] = entry
        total = self.nbytes
        while self._entries and (len(self._entries) > self.max_entries or total > self.max_bytes):
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.nbytes
