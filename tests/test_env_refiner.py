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
