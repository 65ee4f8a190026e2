"""Reflexion as a `ProgramGraph`: play an episode in a text environment; after a failed trial, reflect on it and
start a new trial with the reflection kept in memory.

Built only from the project's parts (graph, env protocol, signatures). The actor and the reflector are predictor
nodes, so `refine optimize reflexion` tunes both; the default metric is the episode's success/progress.

Example:
    >>> graph = build_graph(max_trials=2, max_steps=5)
    >>> graph.node_names
    ['reset', 'act', 'step', 'reflect', 'remember']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import dspy

from refine.envs.base import TextEnv, ToyEnv
from refine.errors import ConfigError
from refine.graph import ProgramGraph
from refine.imports import import_object
from refine.signatures.reflect import ReflectOnTrial, ReflexionAct

__all__ = ["ENVS", "FailedWithTrialsLeft", "build_graph", "remember", "reset", "resolve_env_factory", "step"]

EnvFactory = Callable[[], TextEnv]

ENVS: dict[str, str] = {"toy": "refine.envs.base:ToyEnv"}


def resolve_env_factory(env: str | EnvFactory, max_steps: int) -> EnvFactory:
    """A zero-argument factory of fresh environments from a name in `ENVS`, 'module:attr' or a callable."""
    if callable(env):
        return env
    target = ENVS.get(env, env)
    if ":" not in target:
        raise ConfigError(f"Unknown environment {env!r}; use one of {sorted(ENVS)} or 'package.module:factory'.")
    factory = import_object(target, "environment", form="package.module:factory")
    if factory is ToyEnv:
        return lambda: ToyEnv(max_steps=max_steps)
    return factory


def _entry(action: str | None, observation: str) -> str:
    return f"> {action if action is not None else '(no valid action)'}\n{observation}\n"


OUTPUTS = ("success", "progress", "trial", "steps", "observation", "history", "reflections")
TRIAL_STATE = ("env_handle", "instruction", "available_actions", "observation", "history", "done", "success",
               "progress", "steps")  # fmt: skip
STEP_OUTPUTS = ("observation", "history", "done", "success", "progress", "steps")
RESET = "Start a trial in a fresh environment."
STEP = "Apply the action in the environment."
REMEMBER = "Keep the reflection across trials."


def reset(task: str, seed: int | None, trial: int, *, make_env: EnvFactory) -> dict[str, Any]:
    """Node: start a trial in a fresh environment from `make_env`, with an empty history."""
    handle = make_env()
    first = handle.reset(task=task or None, seed=seed)
    return {
        "env_handle": handle,
        "instruction": first.instruction,
        "available_actions": list(first.available_actions),
        "observation": first.observation,
        "history": "",
        "done": False,
        "success": False,
        "progress": 0.0,
        "steps": 0,
    }


def step(
    env_handle: TextEnv, action: str | None, history: str, steps: int, progress: float, *, max_steps: int
) -> dict[str, Any]:
    """Node: apply the action in the environment and log it; the trial is done at the env's end or `max_steps`."""
    # A malformed actor output (action None, recorded in state["error"]) costs a step instead of crashing the run.
    if action is None or not str(action).strip():
        obs, done, success = "No valid action was given. Answer with one available action.", False, False
    else:
        res = env_handle.step(str(action).strip())
        obs, done, success, progress = res.observation, res.done, res.success, float(res.progress)
    steps += 1
    return {
        "observation": obs,
        "history": history + _entry(action, obs),
        "done": bool(done) or steps >= max_steps,
        "success": bool(success),
        "progress": progress,
        "steps": steps,
    }


def remember(reflection: str | None, reflections: list[str], trial: int) -> dict[str, Any]:
    """Node: keep the reflection (if any) in the memory the next trial's actor reads, and count the trial."""
    memory = [*reflections, reflection] if reflection else list(reflections)
    return {"reflections": memory, "trial": trial + 1}


class FailedWithTrialsLeft:
    """Edge condition: the trial is over, it failed, and another trial is allowed (`trial + 1 < max_trials`)."""

    def __init__(self, max_trials: int) -> None:
        self.max_trials = max_trials
        self.__name__ = "failed_with_trials_left"  # the edge's label in `describe()` and the Mermaid chart

    def __call__(self, state: Mapping[str, Any]) -> bool:
        return bool(state.get("done")) and not state.get("success") and state.get("trial", 0) + 1 < self.max_trials


def build_graph(
    *,
    env: str | EnvFactory = "toy",
    max_trials: int = 3,
    max_steps: int = 10,
    chain_of_thought: bool = False,
    name: str = "reflexion",
) -> ProgramGraph:
    """Build the Reflexion graph: reset -> act -> step, acting until the trial is done; a failed trial with trials
    left goes reflect -> remember -> reset.

    Args:
        env: environment name ('toy'), 'package.module:factory', or a zero-argument callable returning a `TextEnv`.
            A fresh environment is made for every trial, so concurrent runs never share one.
        max_trials: most trials per run (reflections happen between trials).
        max_steps: most actions per trial.
        chain_of_thought: use `dspy.ChainOfThought` for the actor and the reflector.
        name: graph name.

    Raises:
        ConfigError: a bound < 1 or an environment that cannot be imported.
    """
    if max_trials < 1 or max_steps < 1:
        raise ConfigError(f"reflexion: max_trials and max_steps must be >= 1, got {max_trials} and {max_steps}.")
    make_env = resolve_env_factory(env, max_steps)
    make = dspy.ChainOfThought if chain_of_thought else dspy.Predict
    g = ProgramGraph(name, inputs=["task"], outputs=OUTPUTS, defaults={"seed": None, "trial": 0, "reflections": []})
    g.add_node("reset", partial(reset, make_env=make_env), outputs=TRIAL_STATE, description=RESET)
    g.add_node("act", make(ReflexionAct), catch_errors=True, description="Choose the next action.")
    g.add_node("step", partial(step, max_steps=max_steps), outputs=STEP_OUTPUTS, description=STEP)
    g.add_edge("reset", "act")
    g.add_edge("act", "step")
    g.add_edge("step", "act", condition="not done", max_iters=max_steps * max_trials)
    if max_trials > 1:
        g.add_node("reflect", make(ReflectOnTrial), catch_errors=True, description="Learn from the failure.")
        g.add_node("remember", remember, outputs=["reflections", "trial"], description=REMEMBER)
        g.add_edge("step", "reflect", condition=FailedWithTrialsLeft(max_trials))
        g.add_edge("reflect", "remember")
        g.add_edge("remember", "reset", max_iters=max_trials - 1)
    return g
