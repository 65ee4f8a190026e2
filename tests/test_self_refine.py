"""The Self-Refine graph: draft, self-feedback, refine loop, pluggable stop rule and critic, optimizable."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from refine.errors import ConfigError
from refine.programs.self_refine import build_graph, stop_when_satisfied
from refine.programs_registry import load_graph
from refine.testing import ScriptedLM


def _lm(satisfied_after: int = 2) -> ScriptedLM:
    """Drafts 'v0'; each refinement appends '+'; the feedback is satisfied after `satisfied_after` refinements."""

    def respond(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any]:
        if "refined_output" in fields:
            return {"refined_output": inputs["output"] + "+"}
        if "is_satisfactory" in fields:
            n = inputs["output"].count("+")
            return {"feedback": f"add more ({n})", "is_satisfactory": n >= satisfied_after}
        return {"output": "v0"}

    return ScriptedLM(respond)


def _nodes(pred: dspy.Prediction) -> list[str]:
    return [e.node for e in pred.graph_trace]


def test_refines_until_the_feedback_is_satisfied():
    program = build_graph(max_rounds=5).compile()
    with dspy.context(lm=_lm(satisfied_after=2)):
        pred = program(task="write v")
    assert (pred.output, pred.rounds, pred.is_satisfactory) == ("v0++", 2, True)
    assert _nodes(pred) == ["draft", "critique", "check", "refine", "critique", "check", "refine", "critique", "check"]
    assert len(pred.trace) == 6  # 1 draft + 3 critiques + 2 refinements, all in the DSPy trace for optimizers


def test_max_rounds_bounds_the_loop():
    program = build_graph(max_rounds=1).compile()
    with dspy.context(lm=_lm(satisfied_after=10)):
        pred = program(task="write v")
    assert (pred.output, pred.rounds, pred.is_satisfactory) == ("v0+", 1, False)


def test_pluggable_stop_rule_sees_the_state():
    seen: list[dict[str, Any]] = []

    def after_first_round(state):
        seen.append(dict(state))
        return state["rounds"] >= 1

    program = build_graph(max_rounds=5, stop_rule=after_first_round).compile()
    with dspy.context(lm=_lm(satisfied_after=10)):
        pred = program(task="write v")
    assert pred.output == "v0+"
    assert set(seen[0]) == {"task", "output", "feedback", "is_satisfactory", "rounds"}
    assert stop_when_satisfied({"is_satisfactory": True}) is True


def test_stop_rule_and_critic_as_import_specs():
    graph = load_graph(
        "self_refine", stop_rule="tests.test_self_refine:never_stop", critic="tests.test_self_refine:length_critic"
    )
    program = graph.compile()
    assert [n for n, _ in program.named_predictors()] == ["nodes['draft']", "nodes['refine']"]
    with dspy.context(lm=_lm()):
        pred = program(task="write v")
    assert pred.output == "v0+++" and pred.feedback == "long enough"  # never_stop: only max_rounds=3 ends it


def test_bad_options():
    with pytest.raises(ConfigError, match="max_rounds must be >= 1, got 0"):
        build_graph(max_rounds=0)
    with pytest.raises(ConfigError, match="Cannot import stop_rule 'nowhere:fn'"):
        build_graph(stop_rule="nowhere:fn")
    with pytest.raises(ConfigError, match=r"critic must be a callable or 'package\.module:function', got 3"):
        build_graph(critic=3)


def test_chain_of_thought_variant_and_registry():
    program = load_graph("self_refine", chain_of_thought=True).compile()
    assert type(program.nodes["draft"]).__name__ == "ChainOfThought"
    assert "flowchart TD" in build_graph().to_mermaid()


def never_stop(state):
    return False


def length_critic(task, output):
    ok = len(output) >= 4
    return ("long enough" if ok else "too short"), ok


def test_wiring_is_the_self_refine_loop():
    # Pins the graph the node functions are wired into (#18 item 5), with the LM critic and with an external one.
    for critic, critique_kind in ((None, "module"), (length_critic, "function")):
        described = build_graph(max_rounds=2, critic=critic).describe()
        assert [(n["name"], n["kind"], n["inputs"], n["outputs"]) for n in described["nodes"]] == [
            ("draft", "module", ["task"], ["output"]),
            ("critique", critique_kind, ["task", "output"], ["feedback", "is_satisfactory"]),
            ("check", "function", ["task", "output", "feedback", "is_satisfactory", "rounds"], ["stop", "rounds"]),
            ("refine", "module", ["task", "output", "feedback"], ["refined_output"]),
        ]
        assert [(e["src"], e["dst"], e["condition"], e["mapping"], e["max_iters"]) for e in described["edges"]] == [
            ("draft", "critique", "", {}, None),
            ("critique", "check", "", {}, None),
            ("check", "refine", "not stop", {}, None),
            ("refine", "critique", "", {"output": "refined_output"}, 2),
        ]
