"""`GrammarChatAdapter`: DSPy's ChatAdapter whose answer format is enforced by a grammar on the in-process engine.

The adapter formats prompts exactly like `dspy.ChatAdapter`, and additionally ships a Lark grammar of the expected
answer (one `[[ ## field ## ]]` section per output, typed values as bounded JSON) to the LM through
`lm_kwargs["metadata"]`, which DSPy passes to the engine as `request.config.extensions["metadata"]` (and includes in
its cache key). Engines that cannot use a grammar (remote LiteLLM models) get a plain ChatAdapter call.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import dspy

from refine.lm.grammar import GrammarBounds, bounds_for_budget, lark_for_signature

__all__ = [
    "LARK_METADATA_KEY",
    "GrammarChatAdapter",
    "StructureCachingChatAdapter",
    "default_adapter",
    "engine_accepts_grammar",
    "react_tool_args",
    "throughput_adapter",
]

#: Key of the Lark grammar inside `metadata` (the engine reads `request.config.extensions["metadata"][key]`).
LARK_METADATA_KEY = "lark"


def engine_accepts_grammar(lm: Any) -> bool:
    """Whether `lm` is a `dspy.LM` whose custom engine enforces Lark grammars sent through metadata."""
    engine = getattr(lm, "engine", None)
    return bool(getattr(engine, "accepts_lark_grammar", False))


def react_tool_args(react: Any) -> dict[str, dict[str, Any]]:
    """Tool name -> JSON schema of its arguments for a `dspy.ReAct` module (input of `GrammarChatAdapter(tool_args=)`).

    Coupling each tool name with its own argument schema in the grammar is what makes a small model emit usable
    arguments; with a free `dict` the model tends to emit `{}`.
    """
    tools = getattr(react, "tools", None)
    if not isinstance(tools, dict):
        from refine.errors import ConfigError

        raise ConfigError(f"react_tool_args needs a dspy.ReAct module (with a .tools dict), got {type(react).__name__}")
    return {
        name: {
            "type": "object",
            "properties": dict(tool.args),
            "required": list(tool.args),
            "additionalProperties": False,
        }
        for name, tool in tools.items()
    }


class GrammarChatAdapter(dspy.ChatAdapter):
    """A ChatAdapter whose answers always parse on the embedded/local engine.

    The JSON fallback of ChatAdapter is off: with the grammar the chat format cannot fail to parse unless generation
    hits `max_tokens`, and the caps are shrunk to the LM's `max_tokens` so that it does not.

    Args:
        bounds: caps for free text, JSON strings and arrays (default `GrammarBounds()`).
        tool_args: tool name -> argument schema, for ReAct predictors (see `react_tool_args`).
        format_reminder: whether the last user message repeats the output format ("Respond with the corresponding
            output fields, starting with ..."). None (default): only when the LM does not enforce the grammar; with
            the grammar the reminder is redundant, and leaving it out saves ~100 prompt tokens per call. Formatting
            outside a call (`format_finetune_data`) leaves it out too, matching what a locally served student sees.
        **kwargs: passed to `dspy.ChatAdapter` (callbacks, ...).

    Example:
        >>> import dspy
        >>> from refine.lm import GrammarChatAdapter
        >>> adapter = GrammarChatAdapter()
        >>> isinstance(adapter, dspy.ChatAdapter)
        True
    """

    def __init__(
        self,
        bounds: GrammarBounds | None = None,
        tool_args: dict[str, dict[str, Any]] | None = None,
        format_reminder: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("use_json_adapter_fallback", False)
        super().__init__(**kwargs)
        self.bounds = bounds or GrammarBounds()
        self.tool_args = tool_args
        self.format_reminder = format_reminder
        # Outside a call (e.g. `format_finetune_data` for a student that will be served by the local engine) the
        # prompt is formatted as the grammar engine will see it: without the reminder, unless asked for.
        self._reminder = format_reminder is True

    def user_message_output_requirements(self, signature: type[dspy.Signature]) -> str | None:
        """ChatAdapter's output-format reminder, or None when it is switched off (see `format_reminder`)."""
        return super().user_message_output_requirements(signature) if self._reminder else None

    def _for_call(self, lm: Any) -> GrammarChatAdapter:
        """This adapter, or a copy whose reminder setting fits `lm` (a copy: adapters are shared between threads)."""
        reminder = self.format_reminder if self.format_reminder is not None else not engine_accepts_grammar(lm)
        if reminder == self._reminder:
            return self
        clone = copy.copy(self)
        clone._reminder = reminder
        return clone

    def grammar(self, signature: type[dspy.Signature], max_tokens: int | None = None) -> str:
        """The Lark grammar of `signature`'s answer, with caps fitted to `max_tokens`."""
        bounds = bounds_for_budget(signature, max_tokens, self.bounds)
        return lark_for_signature(signature, bounds, tool_args=self.tool_args)

    def _with_grammar(self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature]) -> dict[str, Any]:
        if not engine_accepts_grammar(lm):
            return lm_kwargs
        # The budget the engine will actually apply: per call, else the LM's setting, else the engine's default.
        max_tokens = (
            lm_kwargs.get("max_tokens")
            or getattr(lm, "kwargs", {}).get("max_tokens")
            or getattr(lm.engine, "default_max_tokens", None)
        )
        metadata = dict(lm_kwargs.get("metadata") or {})
        metadata[LARK_METADATA_KEY] = self.grammar(signature, max_tokens)
        return {**lm_kwargs, "metadata": metadata}

    def __call__(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        adapter = self._for_call(lm)
        kwargs = adapter._with_grammar(lm, lm_kwargs, signature)
        return super(GrammarChatAdapter, adapter).__call__(lm, kwargs, signature, demos, inputs)

    async def acall(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        adapter = self._for_call(lm)
        kwargs = adapter._with_grammar(lm, lm_kwargs, signature)
        return await super(GrammarChatAdapter, adapter).acall(lm, kwargs, signature, demos, inputs)


def default_adapter(lm: Any) -> dspy.Adapter:
    """The adapter to use with `lm`: `GrammarChatAdapter` for in-process engines, DSPy's `ChatAdapter` otherwise."""
    return GrammarChatAdapter() if engine_accepts_grammar(lm) else dspy.ChatAdapter()


class StructureCachingChatAdapter(dspy.ChatAdapter):
    """DSPy's ChatAdapter, formatting each signature's field structure once instead of on every call.

    The structure block embeds the pydantic JSON schema of every typed field, which DSPy rebuilds per call: about a
    third of the client CPU of a synthesis item, and the GIL-bound part that caps many-thread throughput to a server.
    It depends only on the signature's fields, so it is cached per signature class (optimizers make new classes).
    """

    def format_field_structure(self, signature: Any) -> str:
        cached = _STRUCTURES.get(signature)
        if cached is None:
            cached = super().format_field_structure(signature)
            _STRUCTURES[signature] = cached
        return cached


_STRUCTURES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def throughput_adapter(lm: Any) -> dspy.Adapter:
    """`default_adapter(lm)`, with DSPy's ChatAdapter swapped for `StructureCachingChatAdapter` (same prompts, less
    client CPU per call): what many-item runs such as `refine synth` use."""
    adapter = default_adapter(lm)
    if type(adapter) is dspy.ChatAdapter:
        return StructureCachingChatAdapter(
            callbacks=adapter.callbacks, use_json_adapter_fallback=adapter.use_json_adapter_fallback
        )
    return adapter
