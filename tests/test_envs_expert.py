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
