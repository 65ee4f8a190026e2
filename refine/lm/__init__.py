"""LMs for dspy-refine: the embedded default model, local checkpoints, LiteLLM models, and grammar-constrained decoding.

Heavy dependencies (torch, transformers, llguidance) load only when an in-process model is first called.
"""

from __future__ import annotations

from refine.lm.adapter import GrammarChatAdapter, default_adapter, engine_accepts_grammar, react_tool_args
from refine.lm.embedded import cache_root, embedded_model_dir
from refine.lm.engine import AsyncLocalEngine, BatchRecord, LocalEngine
from refine.lm.grammar import GrammarBounds, bound_schema, lark_for_signature
from refine.lm.loader import EMBEDDED, is_local_model, load_model
from refine.lm.resolve import configure, configure_cache, get_lm, is_remote, resolve_lm

__all__ = [
    "EMBEDDED",
    "AsyncLocalEngine",
    "BatchRecord",
    "GrammarBounds",
    "GrammarChatAdapter",
    "LocalEngine",
    "bound_schema",
    "cache_root",
    "configure",
    "configure_cache",
    "default_adapter",
    "embedded_model_dir",
    "engine_accepts_grammar",
    "get_lm",
    "is_local_model",
    "is_remote",
    "lark_for_signature",
    "load_model",
    "react_tool_args",
    "resolve_lm",
]
