"""Text environments: the `TextEnv` protocol, the real offline environments and the perturbation wrapper.

`make_env(name, **kwargs)` builds one by name ("babyai", "scienceworld", "pddl", "textworld", "toy"). The real
environments need the `envs` extra (`pip install 'dspy-refine[envs]'`) and are imported only when asked for.
`make_env(name, suite="agentboard")` builds AgentBoard's version of an environment (see `refine.envs.agentboard`);
`check_env(name, suite, options)` validates a name and its options without building anything heavy.

Example:
    >>> env = make_env("toy")
    >>> env.reset().instruction
    'Leave the room through the door.'
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep, TextEnv, ToyEnv
from refine.errors import EnvError

__all__ = [
    "AGENTBOARD_ENVIRONMENTS",
    "DEFAULT_MAX_STEPS",
    "ENVIRONMENTS",
    "EnvObservation",
    "EnvStep",
    "PerturbedEnv",
    "TextEnv",
    "ToyEnv",
    "check_env",
    "make_env",
]

ENVIRONMENTS: dict[str, str] = {
    "babyai": "refine.envs.babyai:BabyAIEnv",
    "scienceworld": "refine.envs.scienceworld:ScienceWorldEnv",
    "pddl": "refine.envs.pddl:PDDLEnv",
    "textworld": "refine.envs.textworld:TextWorldEnv",
    "toy": "refine.envs.base:ToyEnv",
}

# AgentBoard's configuration of the environments it shares with this project (ALFWorld and Jericho need game files
# that cannot be fetched offline; TextWorld is not part of AgentBoard).
AGENTBOARD_ENVIRONMENTS: dict[str, str] = {
    "babyai": "refine.envs.agentboard:AgentBoardBabyAI",
    "scienceworld": "refine.envs.agentboard:AgentBoardScienceWorld",
    "pddl": "refine.envs.agentboard:AgentBoardPDDL",
    "toy": "refine.envs.base:ToyEnv",
}
_SUITES = {"refine": ENVIRONMENTS, "agentboard": AGENTBOARD_ENVIRONMENTS}


def _registry(name: str, suite: str) -> tuple[str, str]:
    if suite not in _SUITES:
        raise EnvError(f"Unknown suite {suite!r}; use one of: {', '.join(_SUITES)}.")
    key = name.strip().lower()
    table = _SUITES[suite]
    if key not in table:
        extra = " (AgentBoard has no TextWorld; use --suite refine for it)" if key == "textworld" else ""
        raise EnvError(f"Unknown environment {name!r} in the {suite} suite{extra}. Available: {', '.join(table)}.")
    module, cls = table[key].split(":")
    return module, cls


def check_env(name: str, suite: str = "refine", options: dict[str, Any] | None = None) -> None:
    """Raise an EnvError if `name` is not an environment of `suite` or `options` are not its constructor's.

    Cheap checks only (no game, JVM or level is built): the name, option names, and task names where the environment
    offers a static `check_options(options)`.
    """
    module, cls = _registry(name, suite)
    env_cls = getattr(importlib.import_module(module), cls)
    params = inspect.signature(env_cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = sorted(k for k in params if k != "self")
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown and not accepts_any:
        raise EnvError(
            f"Unknown option(s) {', '.join(unknown)} for environment {name!r}; it accepts: {', '.join(allowed)}."
        )
    checker = getattr(env_cls, "check_options", None)
    if callable(checker):
        checker(dict(options or {}))


def make_env(name: str, *, perturb: bool = False, suite: str = "refine", **kwargs: Any) -> TextEnv:
    """Create an environment by name; `perturb=True` wraps it in `PerturbedEnv` (reworded actions).

    Keyword arguments go to the environment's constructor (e.g. `max_steps=30`, `split="test"`, `tasks=[...]`).
    `suite="agentboard"` builds AgentBoard's version of the environment.
    """
    module, cls = _registry(name, suite)
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
