"""BabyAI (minigrid) as a text environment: egocentric view rendered as sentences, text actions, subgoal progress.

The agent sees what is in its 7x7 egocentric view ("a red ball 2 steps forward and 1 step to your left"), the wall
ahead and what it carries. Actions are "turn left", "turn right", "move forward", "pick up", "drop" and "toggle".
An action that has no effect (walking into a wall, picking up nothing, toggling a locked door without its key) returns
the reason and counts as invalid, as does any text that is not one of the actions.

Progress follows the built-in BabyAI expert bot: at reset the bot solves a copy of the level, and every milestone
of its solution (entering a room, opening a door, picking up an object) becomes a subgoal; progress is the fraction
of those subgoals the agent has reached, plus the mission itself, so a solved mission always has progress 1.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from refine.envs._common import normalize_action, require
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.errors import EnvError

__all__ = ["ACTIONS", "DEFAULT_TASKS", "BabyAIEnv"]

ACTIONS: dict[str, str] = {
    "turn left": "turn 90 degrees to the left",
    "turn right": "turn 90 degrees to the right",
    "move forward": "move one step forward",
    "pick up": "pick up the object directly in front of you",
    "drop": "drop the object you carry onto the cell directly in front of you",
    "toggle": "open or close the door (or box) directly in front of you; a locked door needs its key in hand",
}

_ALIASES = {
    "left": "turn left",
    "right": "turn right",
    "forward": "move forward",
    "go forward": "move forward",
    "pickup": "pick up",
    "pick": "pick up",
    "open": "toggle",
    "open door": "toggle",
}

# Short levels whose expert solutions fit well inside 30 steps (checked over seeds 0-14: at most 23 steps).
DEFAULT_TASKS = (
    "GoToRedBallGrey",
    "GoToObj",
    "GoToLocal",
    "GoToDoor",
    "PickupLoc",
    "PickupDist",
    "OpenDoor",
    "PutNextLocal",
    "UnlockLocal",
)

DESCRIPTION = (
    "You are an agent in a 2D grid world of rooms seen from your own point of view. Each observation lists the objects "
    "you can see (keys, balls, boxes, doors) with their position relative to you, the wall ahead of you and what you "
    "carry. You can carry one object at a time. Use exactly one of the actions below, written as shown."
)

_SPLIT_OFFSET = {"train": 0, "dev": 500_000, "test": 1_000_000}
_NAMES = {0: "turn left", 1: "turn right", 2: "move forward", 3: "pick up", 4: "drop", 5: "toggle"}
_SKIP = ("unseen", "empty", "wall", "floor", "agent")
_STATES = {0: "open", 1: "closed", 2: "locked"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class BabyAIEnv:
    """A BabyAI level as a `TextEnv`.

    Args:
        max_steps: Episode bound (AgentBoard uses 30).
        split: Which seed range `reset(seed=...)` draws levels from: "train" (seed as is), "dev" (+500,000) or
            "test" (+1,000,000, the default for evaluation), so training and evaluation levels never coincide.
        tasks: Level names (without "BabyAI-" and "-v0") used when `reset(task=None)`; `task` may also be a full gym id.

    Example:
        >>> env = BabyAIEnv()                                 # doctest: +SKIP
        >>> env.reset("GoToRedBallGrey", seed=0).instruction  # doctest: +SKIP
        'go to the red ball'
    """

    name = "babyai"
    description = DESCRIPTION
    _NOOP: str | None = None  # the action that steps the level without changing it (none among the six)
    _PLAYS_ON_AFTER_FAILURE = False  # a level that terminates with reward 0 ends the episode, failed

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
        split: Literal["train", "dev", "test"] = "test",
    ) -> None:
        if split not in _SPLIT_OFFSET:
            raise EnvError(f"BabyAI split must be 'train', 'dev' or 'test', not {split!r}.")
        self.split = split
        self.max_steps = max_steps
        self.tasks = tuple(tasks)
        self._gym = require("gymnasium", "babyai", "minigrid")
        require("minigrid", "babyai")
        self._env: Any = None
        self._steps = 0
        self._subgoals: list[tuple[Any, ...]] = []
        self._reached: set[int] = set()
        self._done = False
        self.task = ""
        self.expert_plan: list[str] = []
        self._expert_queue: list[str] | None = None  # the rest of the expert's plan while the agent follows it
        self.solve_limit: int | None = None  # bot steps planned at reset (None: 4 x max_steps + 50)
        self.expert_solves = False  # whether the plan of the last reset reaches the mission

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Validate `split` and level names (against gymnasium's registry) without building a level."""
        if options.get("split", "test") not in _SPLIT_OFFSET:
            raise EnvError(f"BabyAI split must be 'train', 'dev' or 'test', not {options['split']!r}.")
        tasks = options.get("tasks")
        if tasks is None:
            return
        gym = require("gymnasium", "babyai", "minigrid")
        require("minigrid", "babyai")
        for t in [tasks] if isinstance(tasks, str) else tasks:
            if not isinstance(t, str) or cls.gym_id(t) not in gym.envs.registry:
                raise EnvError(f"Unknown BabyAI level {t!r}. Use a level name such as {', '.join(DEFAULT_TASKS[:3])}.")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def gym_id(task: str) -> str:
        if task.startswith("BabyAI-"):
            return task
        return f"BabyAI-{task}-v0"

    @property
    def actions(self) -> list[str]:
        return list(ACTIONS)

    def _u(self) -> Any:
        return self._env.unwrapped

    def describe(self) -> str:
        """The current egocentric view as text."""
        from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

        u = self._u()
        image = u.gen_obs()["image"]
        seen = []
        for y in range(6, -1, -1):
            for x in range(7):
                obj, color, state = (int(v) for v in image[x, y])
                kind = IDX_TO_OBJECT[obj]
                if kind in _SKIP or (x, y) == (3, 6):
                    continue
                fwd, side = 6 - y, x - 3
                what = (
                    f"a {_STATES[state]} {IDX_TO_COLOR[color]} door"
                    if kind == "door"
                    else (f"a {IDX_TO_COLOR[color]} {kind}")
                )
                if fwd == 0:
                    where = _plural(abs(side), "step") + (" to your right" if side > 0 else " to your left")
                elif side == 0:
                    where = "directly in front of you" if fwd == 1 else f"{fwd} steps in front of you"
                else:
                    where = f"{_plural(fwd, 'step')} forward and {_plural(abs(side), 'step')} to your " + (
                        "right" if side > 0 else "left"
                    )
                seen.append(f"{what} {where}")
        lines = [("You see " + "; ".join(seen) + ".") if seen else "You see no objects."]
        for dist in range(1, 7):
            kind = IDX_TO_OBJECT[int(image[3, 6 - dist][0])]
            if kind in ("wall", "door", "unseen"):
                if kind == "wall":
                    lines.append("You are facing a wall." if dist == 1 else f"There is a wall {dist} steps ahead.")
                break
        carrying = u.carrying
        lines.append(
            f"You are carrying a {carrying.color} {carrying.type}." if carrying else "You are not carrying anything."
        )
        return " ".join(lines)

    def _room(self, u: Any) -> tuple[int, int] | None:
        room_from_pos = getattr(u, "room_from_pos", None)
        if room_from_pos is None:
            return None
        try:
            return tuple(room_from_pos(*u.agent_pos).top)
        except (AttributeError, IndexError, AssertionError):
            return None

    def _solve(self) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The expert bot's solution on a copy of the level: (milestones, text actions)."""
        from minigrid.utils.baby_ai_bot import BabyAIBot

        sim = copy.deepcopy(self._u())
        bot = BabyAIBot(sim)
        subgoals: list[tuple[Any, ...]] = []
        plan: list[str] = []
        start_room = self._room(sim)
        self.expert_solves = False
        limit = self.solve_limit if self.solve_limit is not None else 4 * self.max_steps + 50
        for _ in range(limit):
            action = bot.replan()
            if action == sim.actions.done:
                # The bot is done where the mission needs one more step that changes nothing (e.g. "go to the blue
                # door" while facing it: minigrid verifies after any action). Only an action space with such a
                # step (`_NOOP`, AgentBoard's "go to" of the object in front) can finish it.
                if self._NOOP is not None:
                    _, reward, terminated, _, _ = sim.step(action)
                    if terminated and reward > 0:
                        plan.append(self._NOOP)
                        self.expert_solves = True
                break
            plan.append(_NAMES[int(action)])
            front = sim.grid.get(*sim.front_pos)
            door_was_open = front.is_open if front is not None and front.type == "door" else None
            _, reward, terminated, truncated, _ = sim.step(action)
            if sim.carrying is not None and ("carry", sim.carrying.type, sim.carrying.color) not in subgoals:
                subgoals.append(("carry", sim.carrying.type, sim.carrying.color))
            if door_was_open is False and front.is_open:
                subgoals.append(("open", tuple(int(v) for v in sim.front_pos)))
            room = self._room(sim)
            if room is not None and room != start_room and ("room", room) not in subgoals:
                subgoals.append(("room", room))
            if terminated and reward <= 0 and self._PLAYS_ON_AFTER_FAILURE:
                continue  # a spurious failure the suite ignores (see AgentBoardBabyAI); the bot goes on
            if terminated or truncated:
                self.expert_solves = bool(terminated) and reward > 0  # terminated with reward 0 is a failure
                break
        return subgoals, plan

    def expert_action(self) -> str | None:
        """The expert bot's next action from the current state, or None when over.

        One bot plans the whole rest of the episode on a copy of the level (at reset, and again only after the agent
        took a valid action off that plan); following its plan never builds a new bot. A fresh `BabyAIBot` per step
        loses its plan and map and oscillates (PutNextLocal, UnlockLocal looped in 16 of 20 test episodes).
        """
        if self._env is None or self._done:
            return None
        if self._expert_queue is None:
            _, plan = self._solve()
            self._expert_queue = list(plan)
        return self._expert_queue[0] if self._expert_queue else None

    def valid_actions(self) -> list[str]:
        """The actions a random reference agent draws from (all six primitive actions are always accepted)."""
        return list(ACTIONS)

    def _reached_subgoal(self, goal: tuple[Any, ...]) -> bool:
        u = self._u()
        if goal[0] == "carry":
            return u.carrying is not None and (u.carrying.type, u.carrying.color) == goal[1:]
        if goal[0] == "open":
            cell = u.grid.get(*goal[1])
            return cell is not None and cell.type == "door" and bool(cell.is_open)
        if goal[0] == "room":
            return self._room(u) == goal[1]
        return False

    def _progress(self, success: bool) -> float:
        if success:
            return 1.0
        for i, goal in enumerate(self._subgoals):
            if i not in self._reached and self._reached_subgoal(goal):
                self._reached.add(i)
        return len(self._reached) / (len(self._subgoals) + 1)

    # ------------------------------------------------------------------ protocol
    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        task = task or self.tasks[(seed or 0) % len(self.tasks)]
        if self._env is None or self.task != task:
            try:
                self._env = self._gym.make(self.gym_id(task))
            except Exception as exc:  # gymnasium raises several error types for unknown ids
                raise EnvError(
                    f"Unknown BabyAI level {task!r} ({exc}). Use a level name such as {', '.join(DEFAULT_TASKS[:3])}."
                ) from exc
            self.task = task
        obs, _ = self._env.reset(seed=(seed or 0) + _SPLIT_OFFSET[self.split])
        self._steps, self._reached, self._done = 0, set(), False
        self._subgoals, self.expert_plan = self._solve()
        self._expert_queue = list(self.expert_plan)
        mission = str(obs["mission"])
        return EnvObservation(
            observation=self.describe(),
            instruction=mission[0].upper() + mission[1:] + ".",
            available_actions=list(ACTIONS),
            info={
                "split": self.split,
                "action_descriptions": dict(ACTIONS),
                "task": task,
                "seed": seed,
                "subgoals": len(self._subgoals) + 1,
                "expert_steps": len(self.expert_plan),
                "solvable": self.expert_solves and 0 < len(self.expert_plan) <= self.max_steps,
                "valid_actions": self.actions,
            },
        )

    def step(self, action: str) -> EnvStep:
        if self._env is None:
            raise EnvError("BabyAIEnv.step() called before reset(); call reset(task, seed) first.")
        if self._done:
            raise EnvError("The BabyAI episode is over; call reset() to start a new one.")
        self._steps += 1
        u = self._u()
        a = normalize_action(action)
        a = _ALIASES.get(a, a)
        invalid, feedback, success, terminated = False, "", False, False
        if a not in ACTIONS:
            invalid = True
            feedback = f"'{action.strip()}' is not a valid action. Valid actions: {', '.join(ACTIONS)}."
        else:
            before_pos, before_carry = tuple(u.agent_pos), u.carrying
            front = u.grid.get(*u.front_pos)
            front_state = None if front is None else front.encode()
            idx = next(i for i, n in _NAMES.items() if n == a)
            _, reward, terminated, _, _ = self._env.step(idx)
            success = bool(terminated and reward > 0)
            after_front = u.grid.get(*u.front_pos)
            what = "nothing" if front is None else f"a {front.color} {front.type}"
            if a == "move forward" and tuple(u.agent_pos) == before_pos:
                invalid, feedback = True, f"You cannot move forward: {what} blocks the way."
            elif a == "pick up" and u.carrying is before_carry:
                invalid = True
                feedback = (
                    f"You cannot pick up anything: you already carry a {before_carry.color} {before_carry.type}."
                    if before_carry
                    else f"There is {what} to pick up in front of you."
                )
            elif a == "drop" and u.carrying is before_carry:
                invalid = True
                feedback = (
                    "You are not carrying anything to drop."
                    if before_carry is None
                    else f"You cannot drop here: {what} is in front of you."
                )
            elif a == "toggle" and (after_front is None or after_front.encode() == front_state):
                invalid = True
                feedback = (
                    "There is nothing to toggle in front of you."
                    if front is None
                    else f"The {front.color} {front.type} does not open"
                    + (" without its key." if front.type == "door" else ".")
                )
            elif a == "toggle" and front is not None and front.type == "door":
                feedback = f"You {'open' if front.is_open else 'close'} the {front.color} door."
            elif a == "pick up":
                feedback = f"You pick up the {u.carrying.color} {u.carrying.type}."
            elif a == "drop":
                feedback = f"You drop the {before_carry.color} {before_carry.type}."
        if not invalid and self._expert_queue is not None:  # an invalid action leaves the state as it was
            if self._expert_queue and self._expert_queue[0] == a:
                self._expert_queue.pop(0)
            else:  # a valid action off the plan changed the state: plan again when asked
                self._expert_queue = None
        progress = self._progress(success)
        self._done = bool(terminated) or self._steps >= self.max_steps
        obs = " ".join(p for p in (feedback, self.describe()) if p)
        if success:
            obs = f"{feedback} Mission complete.".strip()
        return EnvStep(
            obs,
            done=self._done,
            success=success,
            progress=progress,
            invalid=invalid,
            available_actions=self.actions,
            info={"steps": self._steps},
        )

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
