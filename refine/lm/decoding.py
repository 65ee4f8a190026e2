"""Per-row constrained decoding for one batched `generate()`: llguidance token masks plus per-row length limits.

Each row of a batch may carry its own grammar (JSON schema from `response_format`, Lark from the adapter's metadata) or
none. Rows that finished (EOS emitted, grammar complete, or their own `max_tokens` reached) get an EOS-only mask, so a
static batch never lets a finished row keep writing and never produces an all `-inf` row.
"""

from __future__ import annotations

import logging
from typing import Any

from refine.errors import LMError
from refine.lm.grammar import COMPACT_JSON, GrammarBounds, bound_schema

__all__ = ["RowLimits", "RowsProcessor", "grammar_for_request"]

logger = logging.getLogger(__name__)


def grammar_for_request(request: Any, bounds: GrammarBounds | None = None) -> str | None:
    """The llguidance grammar a request asks for, or None for free generation.

    `config.response_format` (JSONAdapter, also on ChatAdapter's JSON fallback) wins over a Lark grammar in
    `config.extensions["metadata"]["lark"]` (GrammarChatAdapter). JSON schemas get length bounds and compact whitespace.

    Raises:
        LMError: when the grammar is invalid (names the llguidance error).
    """
    import llguidance

    bounds = bounds or GrammarBounds()
    config = request.config
    response_format = config.response_format
    grammar: str | None = None
    if response_format:
        kind = response_format.get("type")
        if kind == "json_schema":
            schema = response_format.get("schema") or response_format.get("json_schema", {}).get("schema") or {}
        elif kind == "json_object":
            schema = {"type": "object"}
        else:
            raise LMError(
                f"Unsupported response_format type {kind!r}; the in-process engine takes json_schema or json_object"
            )
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            bound_schema(schema, bounds.max_string, bounds.max_items), overrides=dict(COMPACT_JSON)
        )
    else:
        metadata = (config.extensions or {}).get("metadata") or {}
        lark = metadata.get("lark") if isinstance(metadata, dict) else None
        if lark:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    if grammar is not None:
        problem = llguidance.LLMatcher.validate_grammar(grammar)
        if problem:
            raise LMError(f"Invalid grammar for constrained decoding: {problem}")
    return grammar


class RowLimits:
    """What happened to each row: how many tokens it produced and why it stopped."""

    def __init__(self, max_new: list[int]) -> None:
        self.max_new = list(max_new)
        self.generated = [0] * len(max_new)
        self.done = [False] * len(max_new)
        self.hit_limit = [False] * len(max_new)
        self.grammar_error: list[str | None] = [None] * len(max_new)


class RowsProcessor:
    """A transformers logits processor enforcing one optional grammar and one token limit per row.

    Args:
        ll_tokenizer: llguidance tokenizer of the model (`LoadedModel.ll_tokenizer()`).
        grammars: one grammar (or None) per row.
        max_new: one generation limit per row; a row past its limit gets only EOS (reported as `length`).
        vocab_size: number of logits per step.
        eos_ids: end-of-sequence ids; the first is forced on finished rows.
        executor: an `llguidance.LLExecutor` for parallel mask computation.
    """

    def __init__(
        self,
        ll_tokenizer: Any,
        grammars: list[str | None],
        max_new: list[int],
        vocab_size: int,
        eos_ids: tuple[int, ...],
        executor: Any,
    ) -> None:
        import llguidance
        import llguidance.numpy as llnp
        import torch

        self.matchers = [llguidance.LLMatcher(ll_tokenizer, g) if g else None for g in grammars]
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and matcher.is_error():
                raise LMError(f"Grammar of batch row {row} failed to start: {matcher.get_error()}")
        self.limits = RowLimits(max_new)
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.eos = eos_ids[0]
        self.executor = executor
        self.bitmask = llnp.allocate_token_bitmask(len(grammars), vocab_size)
        self._fill = llnp.fill_next_token_bitmask_par
        self._shift = torch.arange(32, dtype=torch.int32)
        self._started = False
        self.grammar_seconds = 0.0

    def _consume(self, last_tokens: list[int]) -> None:
        limits = self.limits
        for row, token in enumerate(last_tokens):
            if limits.done[row]:
                continue
            limits.generated[row] += 1
            if token in self.eos_ids:
                limits.done[row] = True
                continue
            matcher = self.matchers[row]
            if matcher is not None and limits.grammar_error[row] is None and not matcher.consume_token(token):
                limits.grammar_error[row] = matcher.get_error() or "token rejected by the grammar"
                logger.warning("Grammar rejected a token in row %d: %s", row, limits.grammar_error[row])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import time

        import torch

        if self._started:
            self._consume(input_ids[:, -1].tolist())
        self._started = True
        limits = self.limits
        rows = scores.shape[0]
        eos_only = [
            limits.done[r] or limits.grammar_error[r] is not None or limits.generated[r] >= limits.max_new[r]
            for r in range(rows)
        ]
        for r in range(rows):
            if not limits.done[r] and limits.generated[r] >= limits.max_new[r]:
                limits.hit_limit[r] = True
        active = [(m, r) for r, m in enumerate(self.matchers) if m is not None and not eos_only[r]]
        if active:
            start = time.perf_counter()
            self.bitmask.fill(-1)
            self._fill(self.executor, active, self.bitmask)
            bits = torch.from_numpy(self.bitmask).unsqueeze(-1) >> self._shift
            allowed = (bits & 1).bool().view(rows, -1)[:, : scores.shape[1]]
            scores = scores.masked_fill(~allowed, float("-inf"))
            self.grammar_seconds += time.perf_counter() - start
        if any(eos_only):
            rows_idx = torch.tensor([r for r in range(rows) if eos_only[r]])
            forced = torch.full((len(rows_idx), scores.shape[1]), float("-inf"), dtype=scores.dtype)
            forced[:, self.eos] = 0.0
            scores = scores.clone() if not active else scores
            scores[rows_idx] = forced
        return scores

    def describe(self, row: int) -> dict[str, Any]:
        """Debug summary of a row (tokens generated, why it stopped)."""
        return {
            "generated": self.limits.generated[row],
            "done": self.limits.done[row],
            "hit_limit": self.limits.hit_limit[row],
            "grammar_error": self.limits.grammar_error[row],
        }
