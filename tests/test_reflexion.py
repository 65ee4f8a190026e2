"""The Reflexion graph: episodes in a TextEnv, reflections kept across trials, malformed actions, optimizable."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from refine.envs.base import ToyEnv
from refine.errors import ConfigError
from refine.optimizers import optimize
from refine.programs.reflexion import build_graph, resolve_env_factory
from refine.testing import ScriptedLM
from tests.test_optimize_support import MAGIC, make_lm

PLAN = ("take key", "open door", "go door")


def _learner(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any] | str:
    """Fails the first trial ('take lamp'); with a reflection in memory it plays the plan."""
    if "reflection" in fields:
        return {"reflection": "There is no lamp. Take the key, open the door, go through it."}
    if "take the key" not in inputs.get("reflections", "").lower():
        return {"thought": "a lamp may help", "action": "take lamp"}
    step = inputs.get("history", "").count("> ")
    return {"thought": "follow the lesson", "action": PLAN[min(step, 2)]}


def test_reflection_is_remembered_and_the_second_trial_succeeds():
    program = build_graph(max_trials=3, max_steps=3).compile()
    with dspy.context(lm=ScriptedLM(_learner)):
        pred = program(task="leave the room")
    assert (pred.success, pred.progress, pred.trial, pred.steps) == (True, 1.0, 1, 3)
    assert pred.reflections == ["There is no lamp. Take the key, open the door, go through it."]
    assert pred.history.startswith("> take key\nYou take the key.\n")
    nodes = [e.node for e in pred.graph_trace]
    assert nodes.count("reset") == 2 and nodes.count("reflect") == 1 and nodes.count("act") == 6


def test_trials_are_bounded_and_failure_reports_progress():
    program = build_graph(max_trials=2, max_steps=2).compile()
    lm = ScriptedLM(lambda f, i, m: {"reflection": "x"} if "reflection" in f else {"thought": "t", "action": "look"})
    with dspy.context(lm=lm):
        pred = program(task="t")
    assert (pred.success, pred.progress, pred.trial, pred.steps) == (False, 0.0, 1, 2)
    assert len(pred.reflections) == 1  # no reflection after the last trial
    assert lm.calls == 2 * 2 + 1


def test_single_trial_graph_has_no_reflector():
    program = build_graph(max_trials=1).compile()
    assert [n for n, _ in program.named_predictors()] == ["nodes['act']"]


def test_malformed_actor_output_costs_a_step_not_the_run():
    program = build_graph(max_trials=1, max_steps=2).compile()
    with dspy.context(lm=ScriptedLM(lambda f, i, m: "no fields here")):
        pred = program(task="t")
    assert pred.success is False and pred.steps == 2
    assert "No valid action was given" in pred.observation


def test_env_options():
    env = resolve_env_factory("toy", max_steps=7)()
    assert isinstance(env, ToyEnv) and env.max_steps == 7
    assert resolve_env_factory("refine.envs.base:ToyEnv", 3)().max_steps == 3
    with pytest.raises(ConfigError, match=r"Unknown environment 'mud'; use one of \['toy'\]"):
        build_graph(env="mud")
    with pytest.raises(ConfigError, match="max_trials and max_steps must be >= 1, got 0 and 3"):
        build_graph(max_trials=0, max_steps=3)


def test_gepa_teaches_the_actor():
    # The fake actor plays the plan only when its instructions contain MAGIC; GEPA's reflection proposes them.
    res = optimize(
        "reflexion",
        method="gepa",
        program_options={"max_trials": 2, "max_steps": 3},
        trainset=[{"task": "leave"}] * 3,
        devset=[{"task": "leave the room"}] * 2,
        lm=make_lm(),
        optimizer_kwargs={"max_metric_calls": 40},
    )
    assert res.status == "completed"
    assert (res.score_before, res.score_after) == (0.0, 1.0)
    act = next(c for c in res.changes if c.name == "nodes['act']")
    assert MAGIC in act.new_instructions


def test_wiring_is_the_reflexion_loop():
    # Pins the graph the node functions are wired into (#18 item 5): the callable edge condition keeps its label.
    described = build_graph(max_trials=3, max_steps=4).describe()
    assert [(n["name"], n["kind"], n["inputs"]) for n in described["nodes"]] == [
        ("reset", "function", ["task", "seed", "trial"]),
        ("act", "module", ["instruction", "available_actions", "reflections", "history", "observation"]),
        ("step", "function", ["env_handle", "action", "history", "steps", "progress"]),
        ("reflect", "module", ["instruction", "history", "reflections"]),
        ("remember", "function", ["reflection", "reflections", "trial"]),
    ]
    assert [(e["src"], e["dst"], e["condition"], e["max_iters"]) for e in described["edges"]] == [
        ("reset", "act", "", None),
        ("act", "step", "", None),
        ("step", "act", "not done", 12),
        ("step", "reflect", "failed_with_trials_left", None),
        ("reflect", "remember", "", None),
        ("remember", "reset", "", 2),
    ]
    assert "|failed_with_trials_left|" in build_graph().to_mermaid()
