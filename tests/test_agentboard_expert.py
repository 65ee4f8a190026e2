"""The agentboard suite's expert solves every solvable task of a fixed sample per environment, with success 1 and
progress 1.0, and the tasks no expert run fits in the 30-step bound are flagged `solvable: false` (#14)."""

from __future__ import annotations

import pytest

from refine.envs import make_env
from refine.eval import run_episode
from refine.eval.reference_agents import ExpertAgent

pytestmark = pytest.mark.slow


def _play(env, name, seed):
    first = env.reset(seed=seed)
    rec = run_episode(ExpertAgent(), env, {"env": name, "seed": seed}, 30)
    return first.info, rec


def _check(info, rec):
    if info["solvable"]:
        assert rec["success"] and rec["progress"] == 1.0 and rec["invalid_steps"] == 0, rec["error"]
        assert rec["steps"] <= 30 and info["expert_steps"] <= 30
    else:
        assert info["expert_steps"] > 30 or info["expert_steps"] == 0


def test_babyai_sample():
    """Episodes 43 (GoToObjDoor: the mission is done by a step that changes nothing, 'go to' the door in front) and
    60-63 (OpenDoorsOrderN4Debug: minigrid's strict verifier fails the first right toggle; the suite plays on) were
    the 4 unexplained failures; 96 (BlockedUnlockPickup seed 1234) needs more than 30 steps."""
    pytest.importorskip("minigrid")
    env = make_env("babyai", suite="agentboard")
    flags = {}
    for seed in (0, 43, 60, 61, 62, 63, 96):
        info, rec = _play(env, "babyai", seed)
        _check(info, rec)
        flags[seed] = info["solvable"]
    assert flags == {0: True, 43: True, 60: True, 61: True, 62: True, 63: True, 96: False}


def test_pddl_sample():
    """Gripper with n balls between two rooms takes 3n - 1 steps (n even): pddlgym's test problems 0 and 1 (6 and
    10 balls: 17 and 29 steps) fit the bound, problem 2 (14 balls, 41 steps) does not."""
    pytest.importorskip("pddlgym")
    env = make_env("pddl", suite="agentboard", tasks=["gripper"])
    for problem, balls in ((0, 6), (1, 10), (2, 14)):
        info, rec = _play(env, "pddl", problem)
        assert info["expert_steps"] == 3 * balls - 1
        assert sum(1 for o in info["objects"] if o.startswith("ball")) == balls
        _check(info, rec)
        assert info["solvable"] == (problem < 2)
    env = make_env("pddl", suite="agentboard", tasks=["blockworld"])
    for problem in (1, 3):  # problem 0 (6 blocks) takes ~20 s to search
        info, rec = _play(env, "pddl", problem)
        assert info["solvable"]
        _check(info, rec)


def test_scienceworld_sample():
    pytest.importorskip("scienceworld")
    env = make_env("scienceworld", suite="agentboard", gold=True)
    try:
        for seed in (0, 1):
            info, rec = _play(env, "scienceworld", seed)
            assert info["solvable"]
            _check(info, rec)
    finally:
        env.close()
