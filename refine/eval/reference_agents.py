"""Reference agents that bound an evaluation: each environment's expert (upper bound) and a random valid action
(lower bound). `refine eval --agent expert` / `--agent random` play them like any other agent.

They read the environment itself (`start_with_env`), so they need no LM and spend no tokens:

* `ExpertAgent`: the env's `expert_action()` (BabyAI bot, ScienceWorld gold path, PDDL planner, TextWorld
  walkthrough); under reworded actions (`PerturbedEnv`) the action is written in the reworded form;
* `RandomAgent`: a uniformly random action from the env's `valid_actions()` (seeded by the episode's seed, so a
  rerun plays the same actions).

Example:
    >>> from refine.envs.base import ToyEnv
    >>> from refine.eval import EvalConfig, evaluate
    >>> res = evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=2), env_factory=lambda n, p: ToyEnv())
    >>> res.summary["envs"]["toy"]["base"]["success_rate"]
    1.0
"""

from __future__ import annotations

import random
import zlib
from typing import Any, ClassVar

from refine.envs.base import EnvObservation
from refine.errors import ConfigError

__all__ = ["REFERENCE_AGENTS", "ExpertAgent", "RandomAgent", "reference_agent", "valid_actions"]


def valid_actions(env: Any) -> list[str]:
    """The actions the environment accepts in its current state (`valid_actions()`), else its action list."""
    fn = getattr(env, "valid_actions", None)
    if callable(fn):
        return list(fn())
    return list(getattr(env, "actions", []) or [])


def _action(thought: str, action: str | None, error: str | None = None) -> Any:
    from refine.programs.agent import AgentAction

    return AgentAction(thought=thought, action=action, raw=action or "", error=error)


class _ExpertSession:
    def __init__(self, env: Any) -> None:
        self.env = env

    def act(self, observation: str) -> Any:
        from refine.envs.base import expert_action

        action = expert_action(self.env)
        if action is None:
            return _action("The expert has no action here.", None, "the expert found no action from this state")
        reword = getattr(self.env, "perturb_action", None)
        return _action("Expert action.", reword(action) if callable(reword) else action)


class ExpertAgent:
    """The environment's own solver as an agent (an upper bound: success 1 on every task solvable in the cap)."""

    model = "expert"
    name = "expert"
    # ScienceWorld computes its gold path only when asked at load.
    env_options: ClassVar[dict[str, dict[str, Any]]] = {"scienceworld": {"gold": True}}

    def start_with_env(self, env: Any, first: EnvObservation) -> _ExpertSession:
        if not callable(getattr(env, "expert_action", None)):
            raise ConfigError(f"Environment {getattr(env, 'name', env)!r} has no expert; use --agent random or an LM.")
        return _ExpertSession(env)


class _RandomSession:
    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.rng = random.Random(seed)

    def act(self, observation: str) -> Any:
        actions = valid_actions(self.env)
        if not actions:
            return _action("No valid action is listed.", None, "the environment lists no valid action")
        action = self.rng.choice(sorted(actions))
        reword = getattr(self.env, "perturb_action", None)
        return _action("Random valid action.", reword(action) if callable(reword) else action)


class RandomAgent:
    """A uniformly random valid action each step (a lower bound), seeded per episode by `seed` and the task."""

    model = "random"
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def start_with_env(self, env: Any, first: EnvObservation) -> _RandomSession:
        key = f"{getattr(env, 'name', '')}:{first.info.get('task')}:{first.info.get('seed')}:{first.instruction}"
        return _RandomSession(env, self.seed ^ zlib.crc32(key.encode()))


REFERENCE_AGENTS = {"expert": ExpertAgent, "random": RandomAgent}


def reference_agent(name: str) -> ExpertAgent | RandomAgent:
    """`expert` or `random` -> the reference agent."""
    try:
        return REFERENCE_AGENTS[name]()
    except KeyError:
        raise ConfigError(f"Unknown reference agent {name!r}; use one of: {', '.join(REFERENCE_AGENTS)}.") from None
