"""InteractiveRefine with refiner="env": the environment's expert corrects the agent's mistakes."""

from __future__ import annotations

import pytest

from refine.envs.base import ToyEnv
from refine.errors import ConfigError
from refine.programs.interactive import InteractiveRefine, build_graph
from refine.testing import ScriptedLM


def _agent(actions):
    it = iter(actions)
    return ScriptedLM(lambda fields, inputs, messages: {"thought": "I try something.", "action": next(it)})


def test_env_expert_fixes_mistakes_and_trajectory_verifies():
    agent = _agent(["take lamp", "open window", "go door"])  # the expert fixes the first two
    pred = InteractiveRefine(env=ToyEnv, refiner="env", agent_lm=agent, max_steps=10)(seed=0)
    assert pred.verdict.ok, pred.verdict.reasons
    assert pred.success
    players = pred.trajectory.player_turns()
    assert [t.action for t in players] == ["take lamp", "take key", "open window", "open door", "go door"]
    # The two erroneous actions are kept in context but masked; the expert's fixes are trained.
    assert [t.loss for t in players] == [False, True, False, True, True]
    assert "was not accepted" in players[1].thought
    assert pred.trajectory.provenance.models["teacher"] == "env-expert"


def test_env_expert_run_without_errors_is_rejected_for_too_few_refinements():
    agent = _agent(["take key", "open door", "go door"])
    pred = InteractiveRefine(env=ToyEnv, refiner="env", agent_lm=agent, max_steps=10)(seed=0)
    assert pred.success and not pred.verdict.ok
    assert "trajectory: 0 error -> fix episode(s), at least 2 required" in pred.verdict.reasons


def test_env_refiner_needs_a_real_environment():
    with pytest.raises(ConfigError, match="refiner='env' needs a real environment"):
        build_graph(None, refiner="env")
    with pytest.raises(ConfigError, match="refiner must be 'lm' or 'env'"):
        build_graph(ToyEnv, refiner="teacher")


def test_action_pattern_turns_template_slots_into_groups():
    import regex

    from refine.programs.interactive import action_pattern

    assert action_pattern("turn left") == "^turn\\ left$"
    rx = regex.compile(action_pattern("take <thing> from <container>"))
    assert rx.fullmatch("take red apple from fridge").groupdict() == {"arg1": "red apple", "arg2": "fridge"}
    assert rx.fullmatch("take apple") is None
    assert regex.fullmatch(action_pattern("go <direction>", named=False), "go north").groupdict() == {}


def test_script_from_templated_env_checks_parameters_against_its_objects():
    pytest.importorskip("pddlgym")
    from refine.envs import make_env
    from refine.programs.interactive import script_from_env
    from refine.verify import match_action, verify_script

    env = make_env("pddl", split="train", tasks=["blocks"])
    script, _ = script_from_env(env, seed=0)
    assert verify_script(script).ok, verify_script(script).reasons
    objects = env.reset(seed=0).info["objects"]
    stack = next(a for a in script.actions if a.name.startswith("stack "))
    assert stack.parameters == {"arg1": objects, "arg2": objects}
    spec, params, problems = match_action(script, f"stack {objects[0]} {objects[1]}")
    assert spec is stack and params == {"arg1": objects[0], "arg2": objects[1]} and problems == []
    assert "parameter 'arg1'='zz' is not an allowed value" in match_action(script, "pickup zz")[2][0]


def test_env_expert_on_pddl_templates_yields_a_verified_trajectory():
    """The regression behind the quickstart fix: templated PDDL actions must verify, not fail every trajectory."""
    pytest.importorskip("pddlgym")
    from refine.envs import make_env

    def factory():
        return make_env("pddl", split="train", tasks=["blocks"])

    probe = factory()
    probe.reset(seed=0)
    plan = probe.plan()
    assert len(plan) >= 3
    # Two mistakes (an unknown verb, an unknown block), each fixed by the expert with the plan's next step; then
    # the agent follows the rest of the plan.
    agent = _agent(["fly away", "pickup zz", *plan[2:]])
    pred = InteractiveRefine(env=factory, refiner="env", agent_lm=agent, max_steps=len(plan) + 4)(seed=0)
    assert pred.verdict.ok, pred.verdict.reasons
    assert pred.success
    players = pred.trajectory.player_turns()
    assert [t.action for t in players][:4] == ["fly away", plan[0], "pickup zz", plan[1]]
    assert [t.loss for t in players][:4] == [False, True, False, True]
    flags = [(t.parameter_error, t.logic_error) for t in pred.trajectory.turns if t.role == "dm"][:4:2]
    assert flags == [(True, False), (True, False)]
