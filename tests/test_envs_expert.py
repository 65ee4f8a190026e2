"""The environments' own experts (`expert_action`) solve a task from the current state, after mistakes too."""

from __future__ import annotations

import pytest

from refine.envs import make_env
from refine.envs.base import ToyEnv, expert_action


def _play_with_mistakes(env, mistakes=("dance wildly", "fly away"), limit=40):
    env.reset(seed=1)
    for bad in mistakes:
        step = env.step(bad)
        assert step.invalid, f"{bad!r} should be invalid"
    result, n = None, 0
    while (action := expert_action(env)) is not None and n < limit:
        result = env.step(action)
        n += 1
        assert not result.invalid, f"expert action {action!r} was refused: {result.observation}"
        if result.done:
            break
    return result


def test_toy_expert_solves_after_mistakes():
    result = _play_with_mistakes(ToyEnv())
    assert result.success and result.progress == 1.0


def test_expert_action_is_none_without_support():
    class NoExpert:
        pass

    assert expert_action(NoExpert()) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options"),
    [("babyai", {}), ("pddl", {"split": "train", "tasks": ["blocks"]}), ("textworld", {"split": "train"})],
)
def test_real_env_expert_solves_after_mistakes(name, options):
    pytest.importorskip({"babyai": "minigrid", "pddl": "pddlgym", "textworld": "textworld"}[name])
    env = make_env(name, **options)
    result = _play_with_mistakes(env)
    assert result is not None and result.success and result.progress == 1.0
    assert expert_action(env) is None  # the episode is over


@pytest.mark.slow
def test_babyai_expert_solves_every_test_level_within_the_cap():
    """Regression (#14): a new BabyAIBot per step lost its plan and looped on PutNextLocal (10/10) and UnlockLocal
    (6/10) test episodes; one plan per episode solves all 90 (9 levels x seeds 0-9) within 30 steps."""
    pytest.importorskip("minigrid")
    from refine.envs.babyai import DEFAULT_TASKS

    env = make_env("babyai", max_steps=30)
    failed = []
    for task in DEFAULT_TASKS:
        for seed in range(10):
            env.reset(task, seed=seed)
            result = None
            while (action := expert_action(env)) is not None:
                result = env.step(action)
                if result.done:
                    break
            if not (result is not None and result.success and result.progress == 1.0):
                failed.append(f"{task}#{seed}")
    assert failed == []


@pytest.mark.slow
def test_babyai_expert_replans_once_after_an_off_plan_action():
    pytest.importorskip("minigrid")
    env = make_env("babyai", max_steps=30)
    env.reset("PutNextLocal", seed=0)
    plan = list(env.expert_plan)
    off = "turn left" if plan[0] != "turn left" else "turn right"
    env.step(off)  # valid, off the plan: the expert plans again from here
    result = None
    while (action := expert_action(env)) is not None:
        result = env.step(action)
        if result.done:
            break
    assert result is not None and result.success
