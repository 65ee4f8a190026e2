"""`ProgramGraph`: named DSPy modules (or plain functions) wired by conditional edges, compiled to a `dspy.Module`.

The graph wraps a `networkx.DiGraph` that holds only names and wiring; the modules themselves live in a dict
attribute of the compiled `GraphModule`, so `named_predictors()`, DSPy optimizers and `save()/load()` see them.

Execution model: a run keeps one *state* dict (field name -> value), seeded with the graph inputs and defaults.
A node reads its declared inputs from the state and writes its outputs back. After a node runs, each outgoing edge
whose condition holds fires: its field mapping is applied and its target becomes pending. Pending nodes run in a
fixed topological order of the graph without its bounded edges, so a join runs after all its pending parents. Every
cycle must contain an edge with `max_iters`; such an edge fires at most that many times per run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from typing import Any

import dspy
import networkx as nx

from refine.errors import GraphValidationError
from refine.graph_parts import (
    Condition,
    EdgeSpec,
    GraphEvent,
    GraphRunError,
    NodeSpec,
    check_condition,
    describe_wiring,
    function_io,
    has_field,
    mermaid_flowchart,
)

__all__ = ["GraphEvent", "GraphModule", "GraphRunError", "ProgramGraph", "program_hash"]


def _module_io(module: dspy.Module) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Inputs/outputs of a module with a signature (Predict, ChainOfThought, ...) or of a nested graph, else None."""
    if isinstance(module, GraphModule):
        # A nested graph is called with its graph inputs; its single inner predictor says nothing about its I/O.
        # Without declared outputs it returns whatever state its run set, so the caller must name the outputs.
        inner = module.graph
        return (inner.inputs, inner.outputs) if inner.outputs is not None else None
    sig = getattr(module, "signature", None)
    if sig is None:
        preds = module.named_predictors()
        if len(preds) == 1:
            sig = preds[0][1].signature
    if sig is None:
        return None
    return tuple(sig.input_fields), tuple(sig.output_fields)


class ProgramGraph:
    """A declarative refinement program: named nodes, conditional edges with field mappings, bounded loops.

    Example:
        >>> import dspy
        >>> g = (
        ...     ProgramGraph("qa", inputs=["question"])  # add_node / add_edge return the graph, so calls chain
        ...     .add_node("answer", dspy.Predict("question -> answer"))
        ...     .add_node("shout", lambda answer: {"loud": answer.upper()}, inputs=["answer"], outputs=["loud"])
        ...     .add_edge("answer", "shout")
        ... )
        >>> g.validate()
        >>> print(g.to_mermaid().splitlines()[0])
        flowchart TD
    """

    def __init__(
        self,
        name: str,
        inputs: Iterable[str] = (),
        outputs: Iterable[str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        entry: str | None = None,
    ) -> None:
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs) if outputs is not None else None
        self.defaults = dict(defaults or {})
        self.entry = entry
        self._g = nx.DiGraph()
        self._nodes: dict[str, NodeSpec] = {}
        self._impl: dict[str, Any] = {}
        self._edges: list[EdgeSpec] = []

    # ------------------------------------------------------------------ construction
    def add_node(
        self,
        name: str,
        node: dspy.Module | Callable[..., Any],
        *,
        inputs: Iterable[str] | None = None,
        outputs: Iterable[str] | None = None,
        catch_errors: bool = False,
        description: str = "",
    ) -> ProgramGraph:
        """Add a named node. Inputs/outputs default to the module's signature or the function's parameters.

        A function node returns a dict (or `dspy.Prediction`) of its outputs, or a bare value when it has one output.
        With `catch_errors=True` an exception inside the node does not stop the run: its outputs become None and
        `state["error"]` holds "node: Type: message" for a downstream node (a verifier, a retry edge) to act on.
        """
        if name in self._nodes:
            raise GraphValidationError(
                f"Duplicate node name {name!r} in graph {self.name!r}: node names must be unique. "
                f"Existing nodes: {sorted(self._nodes)}. Rename it, e.g. graph.add_node({name + '_2'!r}, ...)."
            )
        if not name.isidentifier():
            raise GraphValidationError(
                f"Node name {name!r} in graph {self.name!r} is not a Python identifier; use letters, digits and '_'."
            )
        if isinstance(node, dspy.Module):
            kind = "module"
            io = _module_io(node)
            if io is None and (inputs is None or outputs is None):
                raise GraphValidationError(
                    f"Node {name!r}: cannot infer inputs/outputs of {type(node).__name__} (it has no single "
                    "signature). "
                    f"Pass them: graph.add_node({name!r}, module, inputs=[...], outputs=[...])."
                )
            in_, out_ = io if io is not None else ((), ())
        elif callable(node):
            kind = "function"
            in_ = function_io(node)
            out_ = (name,)
        else:
            raise GraphValidationError(f"Node {name!r} must be a dspy.Module or a callable, got {type(node).__name__}.")
        spec = NodeSpec(
            name=name,
            kind=kind,
            inputs=tuple(inputs) if inputs is not None else tuple(in_),
            outputs=tuple(outputs) if outputs is not None else tuple(out_),
            catch_errors=catch_errors,
            description=description,
        )
        self._nodes[name] = spec
        self._impl[name] = node
        self._g.add_node(name)
        self.__dict__.pop("_order", None)
        return self

    def add_edge(
        self,
        src: str,
        dst: str,
        *,
        condition: Condition = None,
        mapping: Mapping[str, str] | None = None,
        max_iters: int | None = None,
    ) -> ProgramGraph:
        """Connect `src` to `dst`.

        Args:
            condition: None (always), a state field name (truthy fires; "not field" negates), or `fn(state) -> bool`.
            mapping: `{dst_input: src_output}` field renames applied when the edge fires.
            max_iters: how many times this edge may fire in one run; required on at least one edge of every cycle.
        """
        for n in (src, dst):
            if n not in self._nodes:
                raise GraphValidationError(
                    f"Edge {src!r} -> {dst!r} in graph {self.name!r} names unknown node {n!r}. "
                    f"Existing nodes: {sorted(self._nodes)}. Add it first with graph.add_node({n!r}, ...)."
                )
        if self._g.has_edge(src, dst):
            raise GraphValidationError(
                f"Duplicate edge {src!r} -> {dst!r} in graph {self.name!r}: combine the conditions into one edge."
            )
        if max_iters is not None and max_iters < 1:
            raise GraphValidationError(f"Edge {src!r} -> {dst!r}: max_iters must be >= 1, got {max_iters}.")
        spec = EdgeSpec(src, dst, condition, dict(mapping or {}), max_iters, order=len(self._edges))
        self._edges.append(spec)
        self._g.add_edge(src, dst, spec=spec)
        self.__dict__.pop("_order", None)
        return self

    # ------------------------------------------------------------------ derived facts
    @property
    def nx_graph(self) -> nx.DiGraph:
        """A read-only view of the wiring (node names only)."""
        return self._g.copy(as_view=True)

    @property
    def node_names(self) -> list[str]:
        return list(self._nodes)

    def get_node(self, name: str) -> Any:
        return self._impl[name]

    def get_node_inputs(self, name: str) -> tuple[str, ...]:
        return self._nodes[name].inputs

    def get_node_outputs(self, name: str) -> tuple[str, ...]:
        return self._nodes[name].outputs

    def get_entry_nodes(self) -> list[str]:
        """The explicit `entry`, else nodes without incoming edges, else (a pure loop) the first node added."""
        if self.entry is not None:
            return [self.entry]
        roots = [n for n in self._nodes if self._g.in_degree(n) == 0]
        return roots or list(self._nodes)[:1]

    def _unbounded(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self._nodes)
        g.add_edges_from((e.src, e.dst) for e in self._edges if e.max_iters is None)
        return g

    @cached_property
    def _order(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(nx.lexicographical_topological_sort(self._unbounded(), key=self._rank))}

    def _rank(self, n: str) -> int:
        return list(self._nodes).index(n)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check the whole graph before anything runs; raise `GraphValidationError` naming the node and the fix."""
        if not self._nodes:
            raise GraphValidationError(f"Graph {self.name!r} has no nodes; add one with graph.add_node(name, module).")
        if self.entry is not None and self.entry not in self._nodes:
            raise GraphValidationError(
                f"Graph {self.name!r}: entry node {self.entry!r} does not exist. Existing nodes: {sorted(self._nodes)}."
            )
        unbounded = self._unbounded()
        if not nx.is_directed_acyclic_graph(unbounded):
            cycle = [u for u, _ in nx.find_cycle(unbounded)]
            path = " -> ".join([*cycle, cycle[0]])
            raise GraphValidationError(
                f"Graph {self.name!r} has a cycle without a bound: {path}. Give one of its edges a bound, e.g. "
                f"graph.add_edge({cycle[-1]!r}, {cycle[0]!r}, condition=..., max_iters=4)."
            )
        entries = self.get_entry_nodes()
        reachable: set[str] = set()
        for entry in entries:
            reachable |= {entry, *nx.descendants(self._g, entry)}
        for n in self._nodes:
            if n not in reachable:
                raise GraphValidationError(
                    f"Node {n!r} in graph {self.name!r} is unreachable from the entry node(s) {entries}. "
                    f"Connect it, e.g. graph.add_edge({entries[0]!r}, {n!r}), or remove it."
                )
        available_at_start = set(self.inputs) | set(self.defaults)
        cyclic = self._cyclic_nodes()
        for n, spec in self._nodes.items():
            produced = self._fields_before(n, available_at_start, cyclic)
            for inp in spec.inputs:
                if inp not in produced:
                    producers = sorted(m for m, s in self._nodes.items() if inp in s.outputs)
                    hint = (
                        f"Nodes {producers} produce it but are not upstream: add an edge from one of them."
                        if producers
                        else f"Add it to the graph inputs (ProgramGraph(..., inputs=[..., {inp!r}])), to defaults, "
                        f"or map an upstream output to it: graph.add_edge(src, {n!r}, mapping={{{inp!r}: 'field'}})."
                    )
                    raise GraphValidationError(
                        f"Node {n!r} in graph {self.name!r} needs input {inp!r}, which no upstream node or graph "
                        f"input produces. {hint}"
                    )
        for e in self._edges:
            # A condition or mapping that names a field nobody sets would silently never fire / map None.
            after_src = self._fields_before(e.src, available_at_start, cyclic) | set(self._nodes[e.src].outputs)
            if self._nodes[e.src].catch_errors:
                after_src.add("error")
            if isinstance(e.condition, str):
                key = e.condition[4:].strip() if e.condition.startswith("not ") else e.condition
                if key not in after_src:
                    raise GraphValidationError(
                        f"Edge {e.src!r} -> {e.dst!r} in graph {self.name!r}: condition {e.condition!r} reads field "
                        f"{key!r}, which neither {e.src!r} nor anything upstream of it sets. Fields available there: "
                        f"{sorted(after_src)}. Use one of them, or pass a callable condition=lambda state: ..."
                    )
            for dst_field, src_field in e.mapping.items():
                if src_field not in after_src:
                    raise GraphValidationError(
                        f"Edge {e.src!r} -> {e.dst!r} in graph {self.name!r} maps {dst_field!r} from field "
                        f"{src_field!r}, which neither {e.src!r} nor anything upstream of it sets. Fields available "
                        f"there: {sorted(after_src)}. Fix the mapping {{{dst_field!r}: <source field>}}."
                    )
        if self.outputs:
            all_out = available_at_start | {o for s in self._nodes.values() for o in s.outputs}
            missing = [o for o in self.outputs if o not in all_out]
            if missing:
                raise GraphValidationError(
                    f"Graph {self.name!r} declares outputs {missing} that no node produces; "
                    f"node outputs: {sorted(all_out)}."
                )

    def _fields_before(self, n: str, available_at_start: set[str], cyclic: set[str]) -> set[str]:
        """State fields that may be set when node `n` starts: graph inputs, defaults, upstream outputs, mappings."""
        upstream = nx.ancestors(self._g, n) | ({n} if n in cyclic else set())
        produced = set(available_at_start)
        for u in upstream:
            produced |= set(self._nodes[u].outputs)
            if self._nodes[u].catch_errors:
                produced.add("error")
        for e in self._edges:
            if e.src in upstream or e.src == n:
                produced |= set(e.mapping)
        return produced

    def _cyclic_nodes(self) -> set[str]:
        """Nodes on some cycle: their own outputs from an earlier iteration may feed their inputs."""
        cyclic = {n for comp in nx.strongly_connected_components(self._g) if len(comp) > 1 for n in comp}
        return cyclic | {u for u, v in self._g.edges if u == v}

    # ------------------------------------------------------------------ rendering
    def to_mermaid(self) -> str:
        """Mermaid `flowchart` text: modules as rectangles, functions as rounded boxes, bounded edges dotted."""
        return mermaid_flowchart(self._nodes, self._impl, self._edges)

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the wiring (used in program hashes and manifests)."""
        return describe_wiring(self.name, self.inputs, self.outputs, self._nodes, self._impl, self._edges)

    # ------------------------------------------------------------------ compilation
    def compile(self) -> GraphModule:
        """Validate, then return a `dspy.Module` that runs this graph."""
        self.validate()
        return GraphModule(self)


class GraphModule(dspy.Module):
    """The `dspy.Module` a `ProgramGraph` compiles to.

    DSPy modules of the graph live in `self.nodes` (a dict, which `named_predictors()` walks); plain functions live
    apart in `self._functions`. Each call returns a `dspy.Prediction` with the graph outputs plus `graph_trace`
    (a list of `GraphEvent`) and `trace` (this run's DSPy predictor trace: (predictor, inputs, outputs) tuples).
    The run's predictor trace is also appended to the caller's `dspy.settings.trace`, so optimizers that bootstrap
    from traces (BootstrapFewShot, MIPROv2) see it, while concurrent runs never mix their own traces.
    """

    def __init__(self, graph: ProgramGraph) -> None:
        super().__init__()
        self.graph = graph
        self.nodes = {n: m for n, m in graph._impl.items() if isinstance(m, dspy.Module)}
        self._functions = {n: f for n, f in graph._impl.items() if not isinstance(f, dspy.Module)}
        self._out_edges: dict[str, list[EdgeSpec]] = {n: [] for n in graph._nodes}
        for e in graph._edges:
            self._out_edges[e.src].append(e)
        self._order = graph._order
        self._specs = graph._nodes

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphModule:
        # Optimizers deep-copy programs; copy the module dict, share the immutable wiring and functions.
        import copy

        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k in ("graph", "_functions", "_out_edges", "_order", "_specs"):
                new.__dict__[k] = v
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def _call_node(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        spec = self._specs[name]
        if spec.kind == "module":
            pred = self.nodes[name](**kwargs)
            missing = [o for o in spec.outputs if not has_field(pred, o)]
            if missing:
                raise GraphRunError(
                    f"Module node {name!r} returned a {type(pred).__name__} without its declared outputs {missing}. "
                    "Return a dspy.Prediction with every declared output, or fix outputs=[...] in add_node().",
                    name,
                    [],
                )
            if isinstance(pred, Mapping | dspy.Prediction):
                return {o: pred[o] for o in spec.outputs}
            return {o: getattr(pred, o) for o in spec.outputs}
        result = self._functions[name](**kwargs)
        if isinstance(result, dspy.Prediction):
            return {o: result.get(o) for o in spec.outputs}
        if isinstance(result, Mapping):
            missing = [o for o in spec.outputs if o not in result]
            if missing:
                raise GraphRunError(
                    f"Function node {name!r} returned keys {sorted(result)} but declared outputs {list(spec.outputs)}; "
                    f"missing {missing}. Return a dict with every declared output.",
                    name,
                    [],
                )
            return {o: result[o] for o in spec.outputs}
        if len(spec.outputs) == 1:
            return {spec.outputs[0]: result}
        raise GraphRunError(
            f"Function node {name!r} returned a {type(result).__name__}; with several outputs "
            f"{list(spec.outputs)} it must return a dict.",
            name,
            [],
        )

    def forward(self, **inputs: Any) -> dspy.Prediction:
        graph = self.graph
        missing = [i for i in graph.inputs if i not in inputs and i not in graph.defaults]
        if missing:
            raise GraphRunError(
                f"Graph {graph.name!r} called without inputs {missing}; it needs {list(graph.inputs)}.", "", []
            )
        state: dict[str, Any] = {k: (v.copy() if isinstance(v, list | dict) else v) for k, v in graph.defaults.items()}
        state.update(inputs)
        events: list[GraphEvent] = []
        fired: dict[tuple[str, str], int] = {}
        pending: set[str] = set(graph.get_entry_nodes())
        order = self._order
        outer_trace = dspy.settings.trace
        local_trace: list[Any] = []
        with dspy.context(trace=local_trace):
            while pending:
                name = min(pending, key=order.__getitem__)
                pending.discard(name)
                spec = self._specs[name]
                kwargs = {}
                for i in spec.inputs:
                    if i not in state:
                        raise GraphRunError(
                            f"Node {name!r} in graph {graph.name!r} ran before its input {i!r} was set; "
                            "check the edge conditions upstream of it.",
                            name,
                            events,
                        )
                    kwargs[i] = state[i]
                t0 = time.perf_counter()
                error = None
                try:
                    out = self._call_node(name, kwargs)
                except Exception as exc:
                    if not spec.catch_errors:
                        events.append(GraphEvent(name, kwargs, {}, time.perf_counter() - t0, repr(exc)))
                        if isinstance(exc, GraphRunError):
                            exc.events = events
                            raise
                        raise GraphRunError(
                            f"Node {name!r} in graph {graph.name!r} failed: {type(exc).__name__}: {exc}",
                            name,
                            events,
                        ) from exc
                    error = f"{name}: {type(exc).__name__}: {exc}"
                    out = dict.fromkeys(spec.outputs)
                state.update(out)
                if spec.catch_errors:
                    state["error"] = error
                events.append(GraphEvent(name, kwargs, out, time.perf_counter() - t0, error))
                for e in self._out_edges[name]:
                    key = (e.src, e.dst)
                    if e.max_iters is not None and fired.get(key, 0) >= e.max_iters:
                        continue
                    if not check_condition(e.condition, state):
                        continue
                    fired[key] = fired.get(key, 0) + 1
                    for dst_field, src_field in e.mapping.items():
                        state[dst_field] = state.get(src_field)
                    pending.add(e.dst)
        if outer_trace is not None and local_trace:
            outer_trace.extend(local_trace)
        keys = graph.outputs if graph.outputs is not None else [k for k in state if k not in inputs]
        result = {k: state.get(k) for k in keys}
        return dspy.Prediction(**result, graph_trace=events, trace=local_trace)


def program_hash(module: dspy.Module, extra: Any = None) -> str:
    """A content hash of a program: its wiring (for graphs), every predictor's instructions, fields and demos."""
    payload: dict[str, Any] = {"extra": extra}
    if isinstance(module, GraphModule):
        payload["graph"] = module.graph.describe()
    preds = {}
    for name, p in module.named_predictors():
        sig = p.signature
        preds[name] = {
            "instructions": sig.instructions,
            "inputs": list(sig.input_fields),
            "outputs": list(sig.output_fields),
            "demos": [d.toDict() if hasattr(d, "toDict") else dict(d) for d in p.demos],
        }
    payload["predictors"] = preds
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
