"""`PrefixKVStore`: longest-prefix lookup, one entry per conversation, LRU trimming to the budgets."""

from __future__ import annotations

import torch

from refine.lm.kvcache import PrefixKVStore, common_prefix


def _kv(n: int, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, n, 4), fill), torch.full((2, n, 4), fill)) for _ in range(3)]


def test_lookup_returns_the_longest_common_prefix_capped_by_the_limit():
    store = PrefixKVStore(max_entries=8, max_bytes=1 << 20)
    store.put([1, 2, 3], _kv(3, 1.0))
    store.put([1, 2, 9, 9, 9], _kv(5, 2.0))
    n, entry = store.lookup([1, 2, 9, 9, 4, 4], limit=10)
    assert n == 4 and entry.layers[0][0][0, 0, 0] == 2.0
    assert store.lookup([1, 2, 9, 9, 4, 4], limit=2)[0] == 2
    assert store.lookup([7, 7], limit=5) == (0, None)
    assert store.hits == 2 and store.reused_tokens == 6


def test_a_newer_turn_replaces_the_entry_it_extends():
    store = PrefixKVStore(max_entries=8, max_bytes=1 << 20)
    store.put([1, 2, 3], _kv(3))
    store.put([1, 2, 3, 4, 5], _kv(5))  # the next turn of the same conversation
    assert len(store) == 1 and store.tokens == 5
    store.put([1, 2], _kv(2))  # already covered by the cached conversation
    assert len(store) == 1 and store.tokens == 5
    store.put([1, 2, 7], _kv(3))  # a different continuation is a new entry
    assert len(store) == 2


def test_budgets_evict_the_least_recently_used_and_zero_disables():
    store = PrefixKVStore(max_entries=2, max_bytes=1 << 20)
    store.put([1, 1], _kv(2))
    store.put([2, 2], _kv(2))
    store.lookup([1, 1, 5], limit=3)  # touch [1, 1]
    store.put([3, 3], _kv(2))
    assert store.lookup([2, 2, 5], limit=3) == (0, None) and store.lookup([1, 1, 5], limit=3)[0] == 2
    per_token = 3 * 2 * 2 * 4 * 4  # layers x (keys, values) x heads x head_dim x float32 bytes
    small = PrefixKVStore(max_entries=8, max_bytes=5 * per_token)
    small.put([1, 2, 3], _kv(3))
    small.put([4, 5, 6], _kv(3))
    assert len(small) == 1 and small.tokens == 3 and small.nbytes == 3 * per_token
    small.put(list(range(10, 20)), _kv(10))  # larger than the whole budget: not kept
    assert small.tokens == 3
    off = PrefixKVStore(max_entries=0)
    off.put([1, 2, 3], _kv(3))
    assert len(off) == 0 and off.lookup([1, 2, 3], limit=3) == (0, None)


def test_common_prefix_edges():
    import numpy as np

    assert common_prefix(np.array([], dtype=np.int64), np.array([1])) == 0
    assert common_prefix(np.array([1, 2]), np.array([1, 2])) == 2
    assert common_prefix(np.array([5]), np.array([1])) == 0
