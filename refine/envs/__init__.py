"""Text environments: the `TextEnv` protocol, the real offline environments and the perturbation wrapper.

`make_env(name, **kwargs)` builds one by name ("babyai", "scienceworld", "pddl", "textworld", "toy"). The real
environments need the `envs` extra (`pip install 'dspy-refine[envs]'`) and are imported only when asked for.

Example:
    >>> env = make_env("toy")
    >>> env.reset().instruction
    'Leave the room through the door.'
"""

from __future__ import annotations

import importlib
from typing import Any

from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep, TextEnv, ToyEnv
from refine.errors import EnvError

__all__ = [
    "DEFAULT_MAX_STEPS",
    "ENVIRONMENTS",
    "EnvObservation",
    "EnvStep",
    "PerturbedEnv",
    "TextEnv",
    "ToyEnv",
    "make_env",
]

ENVIRONMENTS: dict[str, str] = {
    "babyai": "refine.envs.babyai:BabyAIEnv",
    "scienceworld": "refine.envs.scienceworld:ScienceWorldEnv",
    "pddl": "refine.envs.pddl:PDDLEnv",
    "textworld": "refine.envs.textworld:TextWorldEnv",
    "toy": "refine.envs.base:ToyEnv",
}


def make_env(name: str, *, perturb: bool = False, **kwargs: Any) -> TextEnv:
    """Create an environment by name; `perturb=True` wraps it in `PerturbedEnv` (reworded actions).

    Keyword arguments go to the environment's constructor (e.g. `max_steps=30`, `split="test"`, `tasks=[...]`).
    """
    key = name.strip().lower()
    if key not in ENVIRONMENTS:
        raise EnvError(f"Unknown environment {name!r}. Available: {', '.join(ENVIRONMENTS)}.")
    module, cls = ENVIRONMENTS[key].split(":")
    try:
        env = getattr(importlib.import_module(module), cls)(**kwargs)
    except TypeError as exc:
        raise EnvError(f"Bad options for environment {name!r}: {exc}.") from exc
    if perturb:
        from refine.envs.perturb import PerturbedEnv

        return PerturbedEnv(env)
    return env


def __getattr__(name: str) -> Any:
    if name == "PerturbedEnv":
        from refine.envs.perturb import PerturbedEnv

        return PerturbedEnv
    raise AttributeError(f"module 'refine.envs' has no attribute {name!r}")
