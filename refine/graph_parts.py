"""The parts a `ProgramGraph` is made of: node and edge specs, edge conditions, the run trace, Mermaid text."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy

from refine.errors import RefineError

__all__ = [
    "Condition",
    "EdgeSpec",
    "GraphEvent",
    "GraphRunError",
    "NodeSpec",
    "check_condition",
    "condition_label",
    "describe_wiring",
    "function_io",
    "has_field",
    "mermaid_flowchart",
]

Condition = Callable[[Mapping[str, Any]], bool] | str | None


class GraphRunError(RefineError, RuntimeError):
    """A node raised while the graph ran. `events` holds the run's trace up to and including the failure."""

    def __init__(self, message: str, node: str, events: list[GraphEvent]):
        super().__init__(message)
        self.node = node
        self.events = events


@dataclass
class GraphEvent:
    """One node execution in a graph run (the graph-level trace; DSPy's predictor trace is kept beside it)."""

    node: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    seconds: float
    error: str | None = None


@dataclass
class NodeSpec:
    name: str
    kind: str  # "module" | "function"
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    catch_errors: bool
    description: str


@dataclass
class EdgeSpec:
    src: str
    dst: str
    condition: Condition
    mapping: dict[str, str]
    max_iters: int | None
    order: int = 0
    label: str = field(default="")


def condition_label(cond: Condition) -> str:
    if cond is None:
        return ""
    if isinstance(cond, str):
        return cond
    return getattr(cond, "__name__", "condition")


def check_condition(cond: Condition, state: Mapping[str, Any]) -> bool:
    if cond is None:
        return True
    if isinstance(cond, str):
        negate = cond.startswith("not ")
        key = cond[4:].strip() if negate else cond
        value = bool(state.get(key))
        return not value if negate else value
    return bool(cond(state))


def mermaid_id(name: str, taken: Iterable[str]) -> str:
    """A Mermaid node id for `name`: `end` (any case) is a Mermaid keyword that breaks the whole flowchart."""
    if name.lower() != "end":
        return name
    taken = set(taken)
    new = name + "_"
    while new in taken:
        new += "_"
    return new


def mermaid_text(text: str) -> str:
    """Escape text for a Mermaid label (quotes, angle brackets of `<lambda>`, the `|` that ends an edge label)."""
    return text.replace('"', "'").replace("<", "#lt;").replace(">", "#gt;").replace("|", "#124;")


def has_field(obj: Any, name: str) -> bool:
    if isinstance(obj, Mapping | dspy.Prediction):
        return name in obj
    return hasattr(obj, name)


def function_io(fn: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty)


def mermaid_flowchart(nodes: Mapping[str, NodeSpec], impl: Mapping[str, Any], edges: Iterable[EdgeSpec]) -> str:
    """Mermaid `flowchart` text: modules as rectangles, functions as rounded boxes, bounded edges dotted."""
    lines = ["flowchart TD"]
    ids = {n: mermaid_id(n, nodes) for n in nodes}
    for n, s in nodes.items():
        label = f"{n}<br/>{type(impl[n]).__name__}" if s.kind == "module" else n
        lines.append(f'    {ids[n]}["{label}"]' if s.kind == "module" else f'    {ids[n]}("{label}")')
    for e in edges:
        parts = []
        if e.condition is not None:
            parts.append(condition_label(e.condition))
        if e.mapping:
            parts.append(", ".join(f"{k}={v}" for k, v in e.mapping.items()))
        if e.max_iters is not None:
            parts.append(f"max {e.max_iters}")
        label = mermaid_text(" / ".join(parts))
        arrow = "-.->" if e.max_iters is not None else "-->"
        src, dst = ids[e.src], ids[e.dst]
        lines.append(f"    {src} {arrow}|{label}| {dst}" if label else f"    {src} {arrow} {dst}")
    return "\n".join(lines) + "\n"


def describe_wiring(
    name: str,
    inputs: Iterable[str],
    outputs: Iterable[str] | None,
    nodes: Mapping[str, NodeSpec],
    impl: Mapping[str, Any],
    edges: Iterable[EdgeSpec],
) -> dict[str, Any]:
    """JSON-able description of a graph's wiring (`ProgramGraph.describe`)."""
    return {
        "name": name,
        "inputs": list(inputs),
        "outputs": list(outputs) if outputs is not None else None,
        "nodes": [
            {
                "name": s.name,
                "kind": s.kind,
                "type": type(impl[s.name]).__name__,
                "inputs": list(s.inputs),
                "outputs": list(s.outputs),
            }
            for s in nodes.values()
        ],
        "edges": [
            {
                "src": e.src,
                "dst": e.dst,
                "condition": condition_label(e.condition),
                "mapping": e.mapping,
                "max_iters": e.max_iters,
            }
            for e in edges
        ],
    }
