"""Self-Refine as a `ProgramGraph`: draft an output, criticise it, refine it, until a pluggable stop rule holds.

Built only from the project's parts (graph, signatures); every LM step is a predictor node, so `refine optimize
self_refine` tunes the drafting, feedback and refinement prompts together.

Example:
    >>> graph = build_graph(max_rounds=2)
    >>> graph.node_names
    ['draft', 'critique', 'check', 'refine']
    >>> graph.compile().named_predictors()[0][0]
    "nodes['draft']"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import dspy

from refine.errors import ConfigError
from refine.graph import ProgramGraph
from refine.imports import import_object
from refine.signatures.self_refine import DraftOutput, RefineOutput, SelfFeedback

__all__ = ["StopRule", "build_graph", "check", "critique", "stop_when_satisfied"]

# A stop rule sees {"task", "output", "feedback", "is_satisfactory", "rounds"} and returns True to stop refining.
StopRule = Callable[[Mapping[str, Any]], bool]
# A critic replaces the LM self-feedback: (task, output) -> (feedback, is_satisfactory).
Critic = Callable[[str, str], tuple[str, bool]]


def stop_when_satisfied(state: Mapping[str, Any]) -> bool:
    """The default rule: stop as soon as the feedback marks the output satisfactory."""
    return bool(state.get("is_satisfactory"))


def _load(spec: Any, what: str) -> Any:
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, str) and ":" in spec:
        return import_object(spec, what, form="package.module:function")
    raise ConfigError(f"{what} must be a callable or 'package.module:function', got {spec!r}.")


def critique(task: str, output: str, *, critic: Critic) -> dict[str, Any]:
    """Node: the external critic's verdict on the output, in place of the LM self-feedback."""
    feedback, ok = critic(task, output)
    return {"feedback": str(feedback), "is_satisfactory": bool(ok)}


def check(
    task: str, output: str, feedback: str, is_satisfactory: bool, rounds: int, *, rule: StopRule, max_rounds: int
) -> dict[str, Any]:
    """Node: stop when the stop rule holds, after `max_rounds` refinements, or without an output; else count a
    round and refine again."""
    state = {"task": task, "output": output, "feedback": feedback, "is_satisfactory": is_satisfactory, "rounds": rounds}
    stop = bool(rule(state)) or rounds >= max_rounds or output is None
    return {"stop": stop, "rounds": rounds if stop else rounds + 1}


def build_graph(
    *,
    max_rounds: int = 3,
    stop_rule: StopRule | str | None = None,
    critic: Critic | str | None = None,
    chain_of_thought: bool = False,
    name: str = "self_refine",
) -> ProgramGraph:
    """Build the Self-Refine graph: draft -> critique -> check, then refine -> critique until the check stops.

    Args:
        max_rounds: most refinement rounds after the first draft (the loop's bound).
        stop_rule: `fn(state) -> bool` or 'module:function'; default `stop_when_satisfied`. The loop also stops
            after `max_rounds`.
        critic: optional `fn(task, output) -> (feedback, ok)` (or 'module:function') used instead of the LM
            self-feedback, e.g. a rule-based verifier.
        chain_of_thought: use `dspy.ChainOfThought` for the LM steps.
        name: graph name.

    Raises:
        ConfigError: `max_rounds` < 1 or an option cannot be imported.
    """
    if max_rounds < 1:
        raise ConfigError(f"self_refine: max_rounds must be >= 1, got {max_rounds}.")
    rule: StopRule = _load(stop_rule, "stop_rule") or stop_when_satisfied
    critic_fn: Critic | None = _load(critic, "critic")
    make = dspy.ChainOfThought if chain_of_thought else dspy.Predict
    outputs = ["output", "feedback", "is_satisfactory", "rounds"]
    g = ProgramGraph(name, inputs=["task"], outputs=outputs, defaults={"rounds": 0})
    g.add_node("draft", make(DraftOutput), description="First attempt at the task.")
    if critic_fn is None:
        g.add_node("critique", make(SelfFeedback), description="The model criticises its own output.")
    else:
        external = partial(critique, critic=critic_fn)
        g.add_node("critique", external, outputs=["feedback", "is_satisfactory"], description="External critic.")
    stop = partial(check, rule=rule, max_rounds=max_rounds)
    g.add_node("check", stop, outputs=["stop", "rounds"], description="Stop rule.")
    g.add_node("refine", make(RefineOutput), description="Rewrite the output from the feedback.")
    g.add_edge("draft", "critique")
    g.add_edge("critique", "check")
    g.add_edge("check", "refine", condition="not stop")
    g.add_edge("refine", "critique", mapping={"output": "refined_output"}, max_iters=max_rounds)
    return g
