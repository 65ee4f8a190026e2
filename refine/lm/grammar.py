"""Grammars for constrained decoding: bounded JSON schemas and the ChatAdapter output format of a signature as Lark.

A grammar only guarantees a parseable answer if generation ends before `max_tokens`, so every schema gets length
bounds (`maxLength` on free strings, `maxItems` on arrays, `additionalProperties: false` on objects) and compact
whitespace, and free-text fields of the chat format are capped. The Lark text is consumed by llguidance (1.9.1), whose
Lark dialect accepts inline `%json {...}` rules.
"""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from refine.errors import ConfigError

__all__ = [
    "COMPACT_JSON",
    "MAX_ABS_INT",
    "GrammarBounds",
    "bound_schema",
    "bounds_for_budget",
    "lark_for_signature",
    "literal_values",
]

#: llguidance options that force compact, single-line JSON (", " and ": " separators, no newlines or indentation).
COMPACT_JSON: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


#: Integers without a range are bounded to +-MAX_ABS_INT so their digit count is finite.
MAX_ABS_INT = 10**15
_RANGE_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@dataclass(frozen=True)
class GrammarBounds:
    """Length caps injected into grammars so constrained generation always finishes.

    Attributes:
        max_text: most characters of a free-text (`str`) field in the chat format.
        max_string: `maxLength` given to JSON strings that have none (and no enum/const/pattern/format).
        max_items: `maxItems` given to JSON arrays that have none.
    """

    max_text: int = 400
    max_string: int = 200
    max_items: int = 8

    def __post_init__(self) -> None:
        for name in ("max_text", "max_string", "max_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GrammarBounds.{name} must be >= 1, got {getattr(self, name)}")


def bound_schema(schema: dict[str, Any], max_string: int = 200, max_items: int = 8) -> dict[str, Any]:
    """Return a copy of a JSON schema with length bounds added everywhere they are missing.

    Strings without `maxLength`, `enum`, `const`, `pattern` or `format` get `maxLength=max_string`; arrays without
    `maxItems` get `maxItems=max_items` (raised to at least `minItems`), integers without a range get
    +-`MAX_ABS_INT`; objects that declare properties get `additionalProperties: false` unless they say otherwise,
    and free-form objects (`dict[str, Any]`) get `maxProperties=max_items` with values limited to bounded scalars or
    short lists of them. Nested schemas (`$defs`, `anyOf`, `items`, ...) are bounded too. Existing bounds are kept
    even when larger.

    Args:
        schema: a JSON schema (as produced by pydantic or DSPy's JSONAdapter); not modified.
        max_string: cap for free strings.
        max_items: cap for arrays.

    Returns:
        The bounded copy.

    Example:
        >>> bound_schema({"type": "object", "properties": {"a": {"type": "string"}}})
        {'type': 'object', 'properties': {'a': {'type': 'string', 'maxLength': 200}}, 'additionalProperties': False}
    """
    if max_string < 1 or max_items < 1:
        raise ConfigError(f"bound_schema needs max_string >= 1 and max_items >= 1, got {max_string}, {max_items}")
    return _bound(copy.deepcopy(schema), max_string, max_items)


def _bound(node: Any, max_string: int, max_items: int) -> Any:
    if isinstance(node, list):
        return [_bound(item, max_string, max_items) for item in node]
    if not isinstance(node, dict):
        return node
    for key, value in list(node.items()):
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(value, dict):
                node[key] = {name: _bound(sub, max_string, max_items) for name, sub in value.items()}
        elif key in ("items", "prefixItems", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            if isinstance(value, (dict, list)):
                node[key] = _bound(value, max_string, max_items)
    kinds = node.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    free = not any(k in node for k in ("enum", "const", "pattern", "format"))
    if "string" in kinds and free and "maxLength" not in node:
        node["maxLength"] = max(max_string, int(node.get("minLength", 0)))
    if "integer" in kinds and free and not any(k in node for k in _RANGE_KEYS):
        # Unbounded integers could run digit after digit until max_tokens; 16 digits are plenty.
        node["minimum"], node["maximum"] = -MAX_ABS_INT, MAX_ABS_INT
    if "array" in kinds and "maxItems" not in node:
        node["maxItems"] = max(max_items, int(node.get("minItems", 0)))
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    elif "object" in kinds and "properties" not in node:
        # A free-form object (dict[str, Any], json_object): bound its size and make "any value" a bounded scalar or a
        # short list of scalars, so the model cannot write one endless value.
        if node.get("additionalProperties", True) is True:
            node["additionalProperties"] = _any_value(max_string, max_items)
        node.setdefault("maxProperties", max_items)
    return node


def _any_value(max_string: int, max_items: int) -> dict[str, Any]:
    scalars: list[dict[str, Any]] = [
        {"type": "string", "maxLength": max_string},
        {"type": "integer", "minimum": -MAX_ABS_INT, "maximum": MAX_ABS_INT},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
    return {"anyOf": [*scalars, {"type": "array", "items": {"anyOf": scalars}, "maxItems": max_items}]}


def bounds_for_budget(signature: Any, max_tokens: int | None, base: GrammarBounds | None = None) -> GrammarBounds:
    """Shrink grammar caps so the worst case of a signature's output fits in `max_tokens`.

    The estimate counts one token per character (the worst case for ASCII text); typical text needs 3-4 times fewer.
    Each output field gets an equal share of the budget after the fixed header text.

    Args:
        signature: a `dspy.Signature` class.
        max_tokens: the LM's generation limit (None = no limit, caps unchanged).
        base: the caps to start from (default `GrammarBounds()`).

    Returns:
        Caps no larger than `base`, each at least 1 (tiny budgets cannot be guaranteed).
    """
    base = base or GrammarBounds()
    if not max_tokens:
        return base
    fields = list(signature.output_fields)
    fixed = sum(len(f"[[ ## {name} ## ]]\n") + 2 for name in fields) + len("[[ ## completed ## ]]") + 1
    share = max(1, (max_tokens - fixed) // max(1, len(fields)))
    # A JSON field spends its share on strings and list items; assume a few strings per item.
    return GrammarBounds(
        max_text=max(1, min(base.max_text, share - 2)),
        max_string=max(1, min(base.max_string, share // 4)),
        max_items=max(1, min(base.max_items, max(1, share // 16))),
    )


def literal_values(annotation: Any) -> tuple[Any, ...] | None:
    """Values of a `Literal[...]` annotation (also inside `Optional`), else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None


def _is_str(annotation: Any) -> bool:
    return annotation is str


def _json_rule(annotation: Any, bounds: GrammarBounds) -> str:
    import pydantic

    try:
        schema = pydantic.TypeAdapter(annotation).json_schema()
    except pydantic.PydanticUserError as exc:
        raise ConfigError(f"Cannot build a grammar for output type {annotation!r}: {exc}") from exc
    bounded = bound_schema(schema, bounds.max_string, bounds.max_items)
    bounded["x-guidance"] = COMPACT_JSON
    return "%json " + json.dumps(bounded)


def _text_rule(max_text: int) -> str:
    # No '[' inside free text: the only way out of the field is the next "[[ ## name ## ]]" header, so the model can
    # never write a header by accident. The closing blank line is part of the same terminal: a separate "\n\n"
    # literal after a text that may itself contain newlines could trap the lexer. The first character may be neither
    # blank (the value would parse as "") nor "{" (small models copy the prompt's "{field}" placeholders).
    return f"/[^\\[{{\\s][^\\[]{{0,{max_text - 1}}}\\n\\n/"


def lark_for_signature(
    signature: Any,
    bounds: GrammarBounds | None = None,
    tool_args: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Turn a signature's outputs into a Lark grammar of DSPy's ChatAdapter answer format.

    The grammar produces `[[ ## field ## ]]\\n<value>\\n\\n` for each output field in order, then
    `[[ ## completed ## ]]`. `str` fields are free text (capped, without `[`), `Literal` fields one of their values,
    and every other type compact JSON following its pydantic schema with bounds injected.

    Args:
        signature: a `dspy.Signature` class.
        bounds: length caps (default `GrammarBounds()`).
        tool_args: for ReAct signatures, tool name -> JSON schema of its arguments; then `next_tool_name` and
            `next_tool_args` are generated together so each tool name gets arguments of its own schema.

    Returns:
        The Lark grammar text (accepted by `llguidance.LLMatcher.grammar_from_lark`).

    Raises:
        ConfigError: when a field's type has no JSON schema.
    """
    bounds = bounds or GrammarBounds()
    q = json.dumps  # JSON string escapes are valid Lark string escapes
    fields = dict(signature.output_fields)
    sequence: list[str] = []
    rules: list[str] = []
    couple = bool(tool_args) and "next_tool_name" in fields and "next_tool_args" in fields
    for index, (name, field) in enumerate(fields.items()):
        annotation = field.annotation
        rule = f"v{index}"
        if couple and name == "next_tool_args":
            continue  # emitted together with next_tool_name
        if couple and name == "next_tool_name":
            options = []
            for tool, schema in (tool_args or {}).items():
                header = f"[[ ## next_tool_name ## ]]\n{tool}\n\n[[ ## next_tool_args ## ]]\n"
                args = bound_schema(schema, bounds.max_string, bounds.max_items)
                args["x-guidance"] = COMPACT_JSON
                options.append(f"{q(header)} %json {json.dumps(args)} {q(chr(10) * 2)}")
            rules.append(f"{rule}: " + " | ".join(options))
            sequence.append(rule)
            continue
        sequence.append(q(f"[[ ## {name} ## ]]\n"))
        values = literal_values(annotation)
        if _is_str(annotation):
            rules.append(f"{rule}: {_text_rule(bounds.max_text)}")
        elif values is not None:
            rules.append(f"{rule}: (" + " | ".join(q(str(v)) for v in values) + f") {q(chr(10) * 2)}")
        else:
            rules.append(f"{rule}: {_json_rule(_unwrap(annotation), bounds)} {q(chr(10) * 2)}")
        sequence.append(rule)
    sequence.append(q("[[ ## completed ## ]]"))
    return "start: " + " ".join(sequence) + "\n" + "\n".join(rules) + "\n"


def _unwrap(annotation: Any) -> Any:
    """Strip `Annotated[...]` so pydantic sees the plain type (metadata such as descriptions is irrelevant here)."""
    if get_origin(annotation) is typing.Annotated:
        return get_args(annotation)[0]
    return annotation
