"""The engine's KV-cache plumbing: laying out batched rows after their cached prefixes, copying rows out of a batched
cache and building a `StaticCache` from cached entries (used by `refine.lm.engine`).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["batched_cache", "cache_kwarg", "cache_of", "layout", "row_layers", "spans"]


@functools.cache
def cache_kwarg() -> str:
    """generate()'s keyword for a ready KV cache: transformers 5 renamed `past_key_values` to `cache`."""
    from importlib.metadata import version

    return "cache" if int(version("transformers").split(".")[0]) >= 5 else "past_key_values"


def cache_of(output: Any) -> Any:
    """The KV cache of a forward or generate() output (transformers 5 names it `cache`, 4 `past_key_values`)."""
    fields = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in fields else getattr(output, "past_key_values", None)


def spans(attended: list[int]) -> list[tuple[int, int]]:
    """The `[start, stop)` runs of 1s in a row of an attention mask.

    Example:
        >>> spans([0, 0, 1, 1, 0, 1, 1, 1])
        [(2, 4), (5, 8)]
    """
    runs: list[tuple[int, int]] = []
    for index, bit in enumerate(attended):
        if bit and runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        elif bit:
            runs.append((index, index + 1))
    return runs


def row_layers(cache: Any, row: int, runs: list[tuple[int, int]], torch: Any) -> list[tuple[Any, Any]]:
    """Row `row` of a batched KV cache, at the `[start, stop)` spans of its sequence axis, as per-layer
    `(keys, values)` copies (slices are copied at memory speed; a gather of the same positions is ~4x slower)."""

    def take(tensor: Any) -> Any:
        parts = [tensor[row, :, start:stop] for start, stop in runs]
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=1)

    return [(take(layer.keys), take(layer.values)) for layer in cache.layers]


def layout(rows: list[tuple[list[int], int]], cached: int, pad_id: int, torch: Any) -> tuple[Any, Any]:
    """Input ids and attention mask of rows `(tokens, n)` whose first `n` tokens are in a KV cache of `cached`
    positions: `[padding | first n tokens | padding | rest]`, the first n right-aligned at `cached`, the rest at the
    end.

    Example:
        >>> import torch
        >>> ids, mask = layout([([5, 6, 7], 2), ([8, 9], 0)], 2, 0, torch)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 0, 7], [0, 0, 8, 9]], [[1, 1, 0, 1], [0, 0, 1, 1]])
    """
    width = cached + max(len(tokens) - n for tokens, n in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (tokens, n) in enumerate(rows):
        if n:
            input_ids[row, cached - n : cached] = torch.tensor(tokens[:n], dtype=torch.long)
            attention[row, cached - n : cached] = 1
        rest = tokens[n:]
        input_ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
        attention[row, width - len(rest) :] = 1
    return input_ids, attention


def batched_cache(parts: list[tuple[int, Any]], width: int, torch: Any, *, config: Any, capacity: int) -> Any:
    """A `StaticCache` of `capacity` positions whose row i holds `parts[i] = (length, entry)` right-aligned in its
    first `width` positions, ready for the tokens that follow.

    Positions before a row's cached tokens stay zero; the attention mask hides them. A static cache is written in
    place as tokens are added, where a `DynamicCache` copies itself whole at every step (25% of a decoding step for
    16 rows of 1,000 tokens on 2 CPU cores). Each entry is copied once, straight into the cache's own tensors.
    """
    from transformers import StaticCache

    template = next(entry for n, entry in parts if n)
    cache = StaticCache(config=config, max_cache_len=capacity)
    for index, (layer, (k0, v0)) in enumerate(zip(cache.layers, template.layers, strict=True)):
        shape = (len(parts), k0.shape[0], width, k0.shape[2])
        direct = hasattr(layer, "cumulative_length") and hasattr(layer, "lazy_initialization")
        if direct:  # transformers >= 5: fill the layer's preallocated tensors, no staging copy
            empty = k0.new_empty((*shape[:2], 0, shape[3]))
            layer.lazy_initialization(empty, empty)
            keys, values = layer.keys[:, :, :width], layer.values[:, :, :width]
        else:
            keys, values = k0.new_zeros(shape), v0.new_zeros(shape)
        for row, (n, entry) in enumerate(parts):
            if n:
                k, v = entry.layers[index]
                keys[row, :, width - n :] = k[:, :n]
                values[row, :, width - n :] = v[:, :n]
        if direct:
            layer.cumulative_length.fill_(width)
        else:
            layer.update(keys, values)
    return cache
