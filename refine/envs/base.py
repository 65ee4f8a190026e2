"""The text-environment protocol shared by interactive synthesis (`InteractiveRefine`) and evaluation.

An environment is any object with `reset(task=None, seed=None) -> EnvObservation` and
`step(action: str) -> EnvStep`. Real environments (BabyAI, ScienceWorld, PDDL, TextWorld) and the LLM dungeon master
over a script implement it; `ToyEnv` is a tiny deterministic one for tests and examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["DEFAULT_MAX_STEPS", "EnvObservation", "EnvStep", "TextEnv", "ToyEnv", "expert_action"]

DEFAULT_MAX_STEPS = 30  # AgentBoard's bound


@dataclass
class EnvObservation:
    """What the agent sees after `reset`: the first observation, its instruction and the actions it may take."""

    observation: str
    instruction: str
    available_actions: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvStep:
    """The result of one `step(action)`.

    `invalid` is True when the environment did not accept the action (unknown command, bad argument); the
    observation then carries the environment's own feedback. `progress` is in [0, 1] (fraction of subgoals reached).
    """

    observation: str
    done: bool
    success: bool
    progress: float
    invalid: bool = False
    available_actions: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TextEnv(Protocol):
    """The protocol. `name` identifies the environment family (e.g. "babyai"); `max_steps` bounds an episode."""

    name: str
    max_steps: int

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation: ...

    def step(self, action: str) -> EnvStep: ...


def expert_action(env: object) -> str | None:
    """The environment's expert next action (BabyAI bot, gold path, plan, walkthrough) if it offers one, else None.

    Environments may implement an optional `expert_action() -> str | None`; it lets a refinement program use the
    environment itself as the teacher that corrects the agent's mistakes (verified by the environment, not an LLM).
    """
    fn = getattr(env, "expert_action", None)
    return fn() if callable(fn) else None


class ToyEnv:
    """A deterministic key-and-door room for tests: take the key, open the door, go through it.

    Actions: "take <obj>", "open <obj>", "go <place>", "look". Wrong objects or order give feedback and count as
    invalid; progress is the fraction of the three subgoals done.

    Example:
        >>> env = ToyEnv()
        >>> env.reset().instruction
        'Leave the room through the door.'
        >>> [env.step(a).progress for a in ["take key", "open door", "go door"]]
        [0.3333333333333333, 0.6666666666666666, 1.0]
    """

    name = "toy"
    SUBGOALS = ("take key", "open door", "go door")

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        self.max_steps = max_steps
        self._done: list[str] = []
        self._steps = 0

    @property
    def actions(self) -> list[str]:
        return ["take key", "take lamp", "open door", "open window", "go door", "look"]

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        self._done, self._steps = [], 0
        return EnvObservation(
            observation="You are in a small room. A key lies on the table. There is a closed door and a window.",
            instruction="Leave the room through the door.",
            available_actions=self.actions,
        )

    def expert_action(self) -> str | None:
        """The next subgoal action, or None once the room is left."""
        return self.SUBGOALS[len(self._done)] if len(self._done) < len(self.SUBGOALS) else None

    def valid_actions(self) -> list[str]:
        """Every listed action is accepted as text (the wrong ones are refused with feedback)."""
        return self.actions

    def _progress(self) -> float:
        return len(self._done) / len(self.SUBGOALS)

    def step(self, action: str) -> EnvStep:
        self._steps += 1
        a = " ".join(action.strip().lower().split())
        expected = self.SUBGOALS[len(self._done)] if len(self._done) < len(self.SUBGOALS) else None
        invalid = False
        if a == "look":
            obs = "You see a table, a door and a window."
        elif a == expected:
            self._done.append(a)
            obs = {
                "take key": "You take the key.",
                "open door": "You unlock and open the door.",
                "go door": "You walk through the door. You are free!",
            }[a]
        elif a in self.actions:
            obs = {
                "take lamp": "There is no lamp here.",
                "open window": "The window is painted shut.",
                "open door": "The door is locked.",
                "go door": "The door is closed.",
                "take key": "You already have the key.",
            }.get(a, "Nothing happens.")
            invalid = True
        else:
            obs = f"Unknown action: {action!r}. Valid actions: {', '.join(self.actions)}."
            invalid = True
        success = len(self._done) == len(self.SUBGOALS)
        done = success or self._steps >= self.max_steps
        return EnvStep(
            obs, done=done, success=success, progress=self._progress(), invalid=invalid, available_actions=self.actions
        )
