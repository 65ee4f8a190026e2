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
    # The fixing turns say what went wrong and what the fix is, in a sentence or two, without the env's feedback.
    assert (
        players[1].thought == "'take lamp' is a valid action, but not now: there is no lamp here. "
        "The fix is 'take key'."
    )
    assert (
        players[3].thought == "'open window' is a valid action, but not now: the window is painted shut. "
        "The fix is 'open door'."
    )
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


class TestRefinementThoughts:
    """The env expert's fixing turns: a short, specific thought, never a copy of the observation."""

    def _script(self):
        from refine.data import ActionSpec, Script
        from refine.programs.interactive import action_pattern

        specs = [ActionSpec(name=a, pattern=action_pattern(a)) for a in ("turn left", "move forward", "pick up")]
        stack = ActionSpec(name="stack <a> <b>", pattern=action_pattern("stack <a> <b>"))
        stack = stack.model_copy(update={"parameters": {"arg1": ["a", "b", "c"], "arg2": ["a", "b", "c"]}})
        return Script(environment="e", tasks=["t"], actions=[*specs, stack])

    def test_each_error_kind_is_named(self):
        from refine.programs.interactive import diagnose

        s = self._script()
        assert diagnose(
            s,
            "pick up the grey box",
            "'pick up the grey box' is not a valid action. Valid actions: "
            "turn left, turn right, move forward, pick up, drop, toggle.",
        ) == ("'pick up' takes no object here; the extra words 'the grey box' make it invalid.")
        assert diagnose(s, "stack a zz") == "'stack a zz' names zz, which is not an object here (objects: a, b, c)."
        assert diagnose(s, "stack x y") == "'stack x y' names x and y, which are not an object here (objects: a, b, c)."
        assert diagnose(s, "dance") == "'dance' is not one of the available actions."
        assert diagnose(s, "move forward", "You cannot move forward: a grey wall blocks the way.") == (
            "'move forward' is a valid action, but not now: a grey wall blocks the way."
        )

    def test_long_feedback_is_not_copied(self):
        from refine.programs.interactive import diagnose

        obs = (
            "The action 'stack a b' is not applicable: its preconditions do not hold. State: a is on the table, "
            "b is on c, c is on the table, the hand is empty, and the goal asks for a on b on c."
        )
        d = diagnose(self._script(), "stack a b", obs)
        assert d == "'stack a b' is a valid action, but not now: its preconditions do not hold."
        listing = "You see: " + ", ".join(f"a red box number {i}" for i in range(20)) + "."
        d = diagnose(self._script(), "turn left", listing)
        assert d == "'turn left' is a valid action, but not now in this state."

    def test_on_policy_pddl_fix_thoughts_are_short_and_specific(self):
        """Real PDDL episode: each fixing turn names the wrong object or state, and the plan's step, in <= 30 words."""
        pytest.importorskip("pddlgym")
        from refine.envs import make_env

        def factory():
            return make_env("pddl", split="train", tasks=["blocks"])

        probe = factory()
        first = probe.reset(seed=0)
        plan = probe.plan()
        agent = _agent(["pickup zz", *plan[1:]])
        pred = InteractiveRefine(env=factory, refiner="env", agent_lm=agent, max_steps=len(plan) + 4)(seed=0)
        fix = pred.trajectory.player_turns()[1]
        assert fix.action == plan[0] and fix.loss
        assert fix.thought.startswith("'pickup zz' names zz, which is not an object here")
        assert fix.thought.endswith((f"The fix is '{plan[0]}'.", f"Instead I {plan[0]}."))
        assert len(fix.thought.split()) <= 30
        error_obs = pred.trajectory.turns[1].observation
        assert error_obs not in fix.thought and first.observation not in fix.thought
