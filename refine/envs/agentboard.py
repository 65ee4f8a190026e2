"""The `agentboard` suite: BabyAI, ScienceWorld and PDDL in AgentBoard's configuration, as far as it can be
reproduced offline (hkust-nlp/AgentBoard, `agentboard/environment/*`, `eval_configs/main_results_all_tasks.yaml`).

What is reproduced, per environment (the README's "agentboard suite" section lists what still differs, and why):

* **BabyAI** (`AgentBoardBabyAI`): AgentBoard's 28 test levels x seeds 1234-1237 (112 episodes; episode i plays level
  i // 4 with seed 1234 + i % 4, reset with that seed directly), its high-level actions (`go to red ball 1`,
  `pickup red ball 1`, `go through blue open door 1`, `toggle and go through grey locked door 1`, `toggle`, `drop`,
  `turn left/right`, `move forward`, `check available actions`) compiled to primitive steps by breadth-first search
  over the cells in view and executed until one has no effect; the valid-action list; observations numbered by
  object ("There is a red ball 1 ..."). Progress: one subgoal credited per step; a `done` (the mission complete) is
  cancelled while progress <= 0.5, and the episode ends when progress reaches 1. Subgoals are AgentBoard's annotation
  patterns when `annotations=DIR` holds `DIR/babyai/test.jsonl`, else derived from the BabyAI bot's solution (rooms
  entered, doors opened, objects carried) plus the mission; with derived subgoals the step that completes the
  mission also credits the subgoals reached on it (the bot's route is one of many, so a different route is not
  penalised).
* **PDDL** (`AgentBoardPDDL`): facts and goals in plain English ("b is on a."), AgentBoard's action wording
  ("unstack b from a", "pick up b", "move from rooma to roomb") next to this project's, a `check valid actions`
  action, progress = fraction of goal facts that hold, success = all of them. Domains: AgentBoard's blockworld and
  gripper map to pddlgym's `blocks` and `gripper` test problems; barman and tyreworld are not shipped by pddlgym
  0.0.7 and are absent.
* **ScienceWorld** (`AgentBoardScienceWorld`): the simplification string
  `selfWateringFlowerPots,openContainers,openDoors,noElectricalAction`, no early stop on ScienceWorld's `done`
  (a failed task keeps its best progress and the agent plays on to the step bound), progress from ScienceWorld's own
  sequential subgoals (`get_goal_progress`) when it reports them, else score / 100 (the record's `progress_source`
  says which), or AgentBoard's annotated subgoals with `annotations=DIR`. Success = the task's score reaches 100.

All three run at AgentBoard's 30-step bound by default. Every observation of the suite is labelled in its records
(`info["suite"] == "agentboard"`), and summaries carry `suite: agentboard`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from typing import Any

from refine.envs._common import normalize_action
from refine.envs.babyai import BabyAIEnv
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.envs.pddl import PDDLEnv, _obj
from refine.envs.scienceworld import DEFAULT_JVM_OPTIONS, ScienceWorldEnv
from refine.errors import EnvError

__all__ = [
    "BABYAI_LEVELS",
    "BABYAI_SEEDS",
    "SCIENCEWORLD_SIMPLIFICATION",
    "AgentBoardBabyAI",
    "AgentBoardPDDL",
    "AgentBoardScienceWorld",
    "load_annotations",
    "match_pattern",
]

# AgentBoard's BabyAI test levels (its level numbers 1-21, 24, 25, 27, 28, 29, 31, 32) and seeds.
BABYAI_LEVELS = (
    "GoToRedBallGrey", "GoToRedBall", "GoToRedBallNoDists", "GoToObjS6", "GoToLocalS8N7", "GoToObjMazeS7",
    "GoToImpUnlock", "GoToSeqS5R2", "GoToRedBlueBall", "GoToDoor", "GoToObjDoor", "Open", "OpenRedDoor",
    "OpenDoorLoc", "OpenRedBlueDoorsDebug", "OpenDoorsOrderN4Debug", "Pickup", "UnblockPickup", "PickupLoc",
    "PickupDistDebug", "PickupAbove", "Unlock", "UnlockLocalDist", "UnlockPickupDist", "BlockedUnlockPickup",
    "UnlockToUnlock", "FindObjS7", "KeyCorridorS6R3",
)  # fmt: skip
BABYAI_SEEDS = (1234, 1235, 1236, 1237)
SCIENCEWORLD_SIMPLIFICATION = "selfWateringFlowerPots,openContainers,openDoors,noElectricalAction"
CHECK_ACTIONS = "check available actions"

_BLOCKING = ("wall", "key", "ball", "box", "lava")
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid's direction vectors: right, down, left, up


def match_pattern(observation: str, pattern: str) -> bool:
    """AgentBoard's subgoal match: every `*`-separated part of `pattern` occurs in one sentence of `observation`.

    Example:
        >>> match_pattern("There is a red ball 1 right in front of you 1 steps away. It is blue.", "red ball*1 steps")
        True
        >>> match_pattern("There is a red ball 1 far away. It is 1 steps.", "red ball*1 steps")
        False
    """
    sep = "**" if "**" in pattern else "*"
    parts = [p.strip().strip(".") for p in pattern.strip().split(sep)]
    return any(all(p in sentence for p in parts) for sentence in observation.split("."))


def load_annotations(root: str | Path, task: str) -> list[dict[str, Any]]:
    """The records of AgentBoard's `root/<task>/test.jsonl` (each with its subgoal patterns), or an EnvError."""
    path = Path(root) / task / "test.jsonl"
    if not path.is_file():
        raise EnvError(
            f"No AgentBoard annotations at {path}; pass --annotations DIR with DIR/{task}/test.jsonl from "
            "AgentBoard's data release (or leave --annotations out to use derived subgoals)."
        )
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EnvError(f"{path}:{n} is not JSON ({exc.msg}); use AgentBoard's file as released.") from exc
        if not isinstance(row, dict):
            raise EnvError(f"{path}:{n} is not a JSON object; use AgentBoard's file as released.")
        rows.append(row)
    return rows


def _subgoal_paths(row: dict[str, Any]) -> list[list[str]]:
    """Alternative subgoal sequences of an annotation row: `subgoals`, or `subgoals_1`, `subgoals_2`, ..."""
    if "subgoals" in row and "subgoals_1" not in row:
        return [[str(s) for s in row["subgoals"]]]
    return [[str(s) for s in v] for k, v in sorted(row.items()) if k.startswith("subgoals") and isinstance(v, list)]


class _PatternProgress:
    """AgentBoard's annotated progress: per step, at most one subgoal (the first position any alternative matches)."""

    def __init__(self, paths: list[list[str]]) -> None:
        self.paths = [list(p) for p in paths if p]
        self.total = len(self.paths[0]) if self.paths else 0
        self.points = 0

    def update(self, observation: str) -> None:
        if not self.paths:
            return
        for i in range(len(self.paths[0])):
            if any(i < len(p) and match_pattern(observation, p[i]) for p in self.paths):
                self.points += 1
                for p in self.paths:
                    if i < len(p):
                        p.pop(i)
                return

    @property
    def progress(self) -> float:
        return self.points / self.total if self.total else 0.0


# ====================================================================== BabyAI
class AgentBoardBabyAI(BabyAIEnv):
    """BabyAI with AgentBoard's high-level actions, level list, seeds and progress rules (see the module docstring).

    `reset(seed=i)` plays episode i of the 112 (level `BABYAI_LEVELS[i // 4 % 28]`, seed `1234 + i % 4`);
    `reset(task, seed)` with an explicit level resets it with `seed` as given.
    """

    name = "babyai"
    description = (
        "You are an agent in a 2D grid world of rooms. Each observation lists the objects in front of you, numbered "
        "by kind, with their distance; you can carry one object at a time. Take one of the available actions per "
        "turn, exactly as written; 'check available actions' lists them."
    )

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, annotations: str | None = None) -> None:
        super().__init__(max_steps=max_steps, tasks=BABYAI_LEVELS, split="train")
        # The bot plans at most one step past the bound: the large levels (UnlockToUnlock, KeyCorridorS6R3) take
        # minutes to plan in full, and a plan longer than the bound only says the episode cannot be solved in it.
        self.solve_limit = max_steps + 1
        self.annotations = annotations
        self._rows = load_annotations(annotations, "babyai") if annotations else None
        if self._rows is not None and len(self._rows) != len(BABYAI_LEVELS) * len(BABYAI_SEEDS):
            raise EnvError(
                f"{annotations}/babyai/test.jsonl has {len(self._rows)} rows; AgentBoard's has "
                f"{len(BABYAI_LEVELS) * len(BABYAI_SEEDS)} (28 levels x 4 seeds, in that order)."
            )
        self._high: dict[str, list[int]] = {}
        self._errors: dict[str, str] = {}
        self._credited = 0
        self._pending: deque[int] = deque()
        self._mission_done = False
        self._patterns: _PatternProgress | None = None
        self._abs_steps = 0

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        ann = options.get("annotations")
        if ann and not (Path(ann) / "babyai" / "test.jsonl").is_file():
            load_annotations(ann, "babyai")  # raises with the fix

    @staticmethod
    def gym_id(task: str) -> str:
        """AgentBoard's `-v0` id, or `-v1` where minigrid 3 has retired the v0 (GoToObjS6: same level, new version)."""
        if task.startswith("BabyAI-"):
            return task
        import gymnasium

        v0 = f"BabyAI-{task}-v0"
        return v0 if v0 in gymnasium.envs.registry else f"BabyAI-{task}-v1"

    # ------------------------------------------------------------------ view and actions
    def _view(self) -> list[dict[str, Any]]:
        """The objects in view, nearest first: name ('red ball', 'grey locked door'), absolute position, distance."""
        from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

        u = self._u()
        image = u.gen_obs()["image"]
        ax, ay = (int(v) for v in u.agent_pos)
        f, r = _DIRS[u.agent_dir], _DIRS[(u.agent_dir + 1) % 4]
        objs = []
        for j in range(7):  # far row first, then left to right: AgentBoard's numbering order before the distance sort
            for i in range(7):
                kind = IDX_TO_OBJECT[int(image[i, j][0])]
                if kind not in ("door", "key", "ball", "box", "goal", "lava", "wall"):
                    continue
                fwd, side = 6 - j, i - 3
                if fwd == 0 and side == 0:
                    continue
                pos = (ax + f[0] * fwd + r[0] * side, ay + f[1] * fwd + r[1] * side)
                color = IDX_TO_COLOR[int(image[i, j][1])]
                state = ("open", "closed", "locked")[int(image[i, j][2])] if kind == "door" else ""
                name = f"{color} {state} door" if kind == "door" else f"{color} {kind}"
                objs.append({"name": name, "kind": kind, "pos": pos, "fwd": fwd, "side": side,
                             "dist": abs(fwd) + abs(side)})  # fmt: skip
        objs.sort(key=lambda o: o["dist"])
        counts: dict[str, int] = {}
        for o in objs:
            if o["kind"] != "wall":
                counts[o["name"]] = counts.get(o["name"], 0) + 1
                o["label"] = f"{o['name']} {counts[o['name']]}"
        return objs

    def _in_view(self, pos: tuple[int, int]) -> bool:
        u = self._u()
        ax, ay = (int(v) for v in u.agent_pos)
        f, r = _DIRS[u.agent_dir], _DIRS[(u.agent_dir + 1) % 4]
        dx, dy = pos[0] - ax, pos[1] - ay
        fwd = dx * f[0] + dy * f[1]
        side = dx * r[0] + dy * r[1]
        return 0 <= fwd <= 6 and -3 <= side <= 3

    def _path(self, goal: tuple[int, int], blocked: set[tuple[int, int]], arrive: bool) -> list[int] | None:
        """Primitive actions (0 left, 1 right, 2 forward) from the agent to stand on `goal` (arrive) or face it."""
        u = self._u()
        start = (tuple(int(v) for v in u.agent_pos), int(u.agent_dir))
        parents: dict[tuple[tuple[int, int], int], tuple[Any, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            state = queue.popleft()
            (x, y), d = state
            front = (x + _DIRS[d][0], y + _DIRS[d][1])
            if (arrive and (x, y) == goal) or (not arrive and front == goal):
                path = []
                while parents[state] is not None:
                    state, action = parents[state]  # type: ignore[misc]
                    path.append(action)
                return path[::-1]
            for action in (2, 0, 1):
                if action == 2:
                    if front in blocked or not self._in_view(front):
                        continue
                    nxt = (front, d)
                else:
                    nxt = ((x, y), (d - 1) % 4 if action == 0 else (d + 1) % 4)
                if nxt not in parents:
                    parents[nxt] = (state, action)
                    queue.append(nxt)
        return None

    def _compile(self) -> tuple[dict[str, list[int]], dict[str, str]]:
        """The high-level actions available now, each with its primitive steps, and reasons for unavailable ones."""
        u = self._u()
        objs = self._view()
        blocked = {
            o["pos"] for o in objs if o["kind"] in _BLOCKING or (o["kind"] == "door" and "open" not in o["name"])
        }
        actions: dict[str, list[int]] = {"turn left": [0], "turn right": [1]}
        errors: dict[str, str] = {}
        ax, ay = (int(v) for v in u.agent_pos)
        front = (ax + _DIRS[u.agent_dir][0], ay + _DIRS[u.agent_dir][1])
        if front in blocked:
            errors["move forward"] = "There is a barrier in front of you, you can't move forward."
        else:
            actions["move forward"] = [2]
        carrying = u.carrying
        for o in objs:
            if o["kind"] == "wall":
                continue
            label = o["label"]
            face = self._path(o["pos"], blocked, arrive=False)
            if o["kind"] in ("key", "ball", "box") and carrying is None:
                if face is None:
                    errors[f"pickup {label}"] = f"You cannot pickup {label}, as there is no path leading to it."
                else:
                    actions[f"pickup {label}"] = [*face, 3]
            if o["kind"] == "door" and "open" in o["name"]:
                through = self._path(o["pos"], blocked - {o["pos"]}, arrive=True)
                if through is None:
                    errors[f"go through {label}"] = f"You cannot go through {label}, as there is no path leading to it."
                else:
                    actions[f"go through {label}"] = through
            if o["kind"] == "door" and "open" not in o["name"]:
                color = o["name"].split()[0]
                errors[f"go through {label}"] = f"You cannot go through {label}, as it is closed. Toggle it first."
                if "locked" in o["name"] and (carrying is None or carrying.type != "key"):
                    errors[f"toggle and go through {label}"] = (
                        f"You cannot toggle and go through {label}, as you are not carrying a key."
                    )
                elif "locked" in o["name"] and carrying.color != color:
                    errors[f"toggle and go through {label}"] = (
                        f"You cannot toggle and go through {label}, as the color of the key you are carrying does "
                        "not match the color of the door."
                    )
                elif face is None:
                    errors[f"toggle and go through {label}"] = (
                        f"You cannot toggle and go through {label}, as there is no path leading to it."
                    )
                else:
                    actions[f"toggle and go through {label}"] = [*face, 5, 2]
            if face is not None and o["kind"] != "goal":
                actions.setdefault(f"go to {label}", face)
            elif face is None and o["kind"] != "goal":
                errors.setdefault(f"go to {label}", f"You cannot go to {label}, as there is no path leading to it.")
        front_obj = u.grid.get(*front)
        if front_obj is not None and front_obj.type in ("door", "box"):
            actions["toggle"] = [5]
        if carrying is None:
            errors["drop"] = "You cannot drop the object, as you are not carrying anything."
        elif front_obj is None:
            actions["drop"] = [4]
        else:
            errors["drop"] = "You cannot drop the object, as there is already an object in front of you."
        actions[CHECK_ACTIONS] = []
        return actions, errors

    def describe(self) -> str:
        """The view as AgentBoard words it: numbered objects with their distance, the barrier ahead, what you carry."""
        u = self._u()
        objs = self._view()
        seen = [o for o in objs if o["kind"] != "wall"]
        if seen:
            parts = ["In front of you in this room, you can see several objects:"]
            for o in seen:
                if o["side"] == 0:
                    where = f"right in front of you {o['fwd']} steps away."
                else:
                    side = f"{abs(o['side'])} steps to your {'right' if o['side'] > 0 else 'left'}"
                    where = f"{o['fwd']} steps in front of you and {side}."
                parts.append(f"There is a {o['label']} {where}")
            text = " ".join(parts)
        else:
            text = "You cannot see any objects within sight."
        ahead = [o for o in objs if o["side"] == 0 and o["kind"] in ("wall", "box")]
        text += " The room has walls around you."
        if ahead:
            nearest = min(ahead, key=lambda o: o["fwd"])
            text += f" You are facing a {nearest['kind']} {nearest['fwd']} steps away."
        c = u.carrying
        text += f" You are carrying a {c.color} {c.type}." if c else " You are not carrying anything."
        return text

    # ------------------------------------------------------------------ progress
    @property
    def _total(self) -> int:
        return self._patterns.total if self._patterns is not None else len(self._subgoals) + 1

    def _note_reached(self) -> None:
        for i, goal in enumerate(self._subgoals):
            if i not in self._reached and self._reached_subgoal(goal):
                self._reached.add(i)
                self._pending.append(i)

    def _credit(self, observation: str) -> float:
        if self._patterns is not None:
            self._patterns.update(observation)
            return self._patterns.progress
        if self._mission_done:  # the mission implies the bot's milestones (any route to it is fine)
            self._credited = self._total
        elif self._pending:
            self._pending.popleft()
            self._credited += 1
        return self._credited / self._total

    def progress(self) -> float:
        """Progress so far (fraction of subgoals credited)."""
        if self._patterns is not None:
            return self._patterns.progress
        return self._credited / self._total

    # ------------------------------------------------------------------ protocol
    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        index = seed or 0
        if task is None:
            n = len(BABYAI_LEVELS) * len(BABYAI_SEEDS)
            task = BABYAI_LEVELS[index % n // len(BABYAI_SEEDS)]
            level_seed = BABYAI_SEEDS[index % len(BABYAI_SEEDS)]
            row = self._rows[index % n] if self._rows is not None else None
        else:
            level_seed, row = index, None
        # BabyAIEnv adds its split offset; "train" has none, so the level is reset with AgentBoard's seed as is.
        first = super().reset(task, level_seed)
        mission = first.instruction.rstrip(".").replace(" then ", " and ").replace(" after you ", " and ")
        self._patterns = _PatternProgress(_subgoal_paths(row)) if row is not None else None
        self._credited, self._pending, self._mission_done = 0, deque(), False
        self._high, self._errors = self._compile()
        info = dict(first.info)
        info.update(
            suite="agentboard",
            episode=index,
            seed=level_seed,
            valid_actions=list(self._high),
            action_descriptions={},
            split="AgentBoard test levels and seeds",
            progress_source="annotations" if row is not None else "derived",
            subgoals=self._total,
        )
        return EnvObservation(
            observation=self.describe(),
            instruction=mission[0].upper() + mission[1:] + ".",
            available_actions=[
                "turn left", "turn right", "move forward", "go to <object> <n>", "pickup <object> <n>",
                "go through <color> open door <n>", "toggle and go through <color> <closed|locked> door <n>",
                "toggle", "drop", CHECK_ACTIONS,
            ],
            info=info,
        )  # fmt: skip

    def valid_actions(self) -> list[str]:
        return [a for a in self._high if a != CHECK_ACTIONS] or list(self._high)

    def expert_action(self) -> str | None:
        """The bot's next primitive step, written as the high-level action that performs exactly that step."""
        primitive = super().expert_action()
        if primitive is None:
            return None
        if primitive in ("turn left", "turn right", "move forward", "drop", "toggle"):
            return primitive
        if primitive == "pick up":
            for name, steps in self._high.items():
                if name.startswith("pickup ") and steps == [3]:
                    return name
        return None

    def _track_expert(self, steps: list[int], effective: int) -> None:
        """Keep the expert's plan while the agent's step was exactly the plan's next primitive step."""
        from refine.envs.babyai import _NAMES

        if effective == 0 or self._expert_queue is None:
            return
        if len(steps) == 1 and self._expert_queue and self._expert_queue[0] == _NAMES[steps[0]]:
            self._expert_queue.pop(0)
        else:
            self._expert_queue = None

    def step(self, action: str) -> EnvStep:
        if self._env is None:
            raise EnvError("AgentBoardBabyAI.step() called before reset(); call reset(task, seed) first.")
        if self._done:
            raise EnvError("The BabyAI episode is over; call reset() to start a new one.")
        self._steps += 1
        a = " ".join(action.strip().lower().split()).rstrip(".")
        u = self._u()
        invalid = False
        if "check" in a:
            obs = "You can take the following actions: " + ", ".join(self._high)
        elif a not in self._high:
            invalid = True
            obs = self._errors.get(a, "The action is not recognized. Please check valid actions.")
        else:
            steps = self._high[a]
            effective = 0
            for prim in steps:
                before = (tuple(u.agent_pos), u.agent_dir, u.carrying, u.grid.get(*u.front_pos))
                front_state = None if before[3] is None else before[3].encode()
                _, reward, terminated, _, _ = self._env.step(prim)
                after_front = u.grid.get(*u.front_pos)
                self._note_reached()
                if terminated and reward > 0:
                    self._mission_done = True
                    break
                changed = (tuple(u.agent_pos), u.agent_dir, u.carrying) != before[:3] or (
                    (None if after_front is None else after_front.encode()) != front_state
                )
                if not changed:  # AgentBoard stops a compiled action at its first step without effect
                    break
                effective += 1
            self._track_expert(steps, effective + int(self._mission_done))
            self._high, self._errors = self._compile()
            obs = self.describe()
        if self._mission_done and "The task is completed." not in obs:
            obs += " The task is completed."
        progress = self._credit(obs)
        # AgentBoard's rules: a done is cancelled while progress <= 0.5; reaching progress 1 ends the episode.
        done = (self._mission_done and progress > 0.5) or progress >= 1.0
        success = done
        self._done = done or self._steps >= self.max_steps
        return EnvStep(
            obs,
            done=self._done,
            success=success,
            progress=progress,
            invalid=invalid,
            available_actions=list(self._high),
            info={"steps": self._steps, "suite": "agentboard"},
        )


# ====================================================================== PDDL
_ENGLISH: dict[str, dict[str, str]] = {
    "blocks": {
        "on": "{0} is on {1}.",
        "ontable": "{0} is on the table.",
        "clear": "{0} is clear.",
        "handempty": "The hand is empty.",
        "handfull": "The hand is full.",
        "holding": "You are holding {0}.",
    },
    "gripper": {
        "at-robby": "Robby is at {0}.",
        "at": "{0} is at {1}.",
        "free": "{0} is free.",
        "carry": "{0} is carried by {1}.",
    },
}
# Static facts that only say what an object is or what may be done with it: not shown, as in AgentBoard.
_STATIC = {"blocks": {"pickup", "putdown", "stack", "unstack"}, "gripper": {"room", "ball", "gripper"}}
# AgentBoard's action wording -> this project's (pddlgym's) action text.
_WORDING: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "blocks": [
        (re.compile(r"^pick ?up (\S+)$"), "pickup {0}"),
        (re.compile(r"^put ?down (\S+)$"), "putdown {0}"),
        (re.compile(r"^stack (\S+) on (?:top of )?(\S+)$"), "stack {0} {1}"),
        (re.compile(r"^unstack (\S+) from (?:on top of )?(\S+)$"), "unstack {0}"),
    ],
    "gripper": [
        (re.compile(r"^move from (\S+) to (\S+)$"), "move {0} {1}"),
        (re.compile(r"^pick (\S+) in (\S+) with (\S+)$"), "pick {0} {1} {2}"),
        (re.compile(r"^drop (\S+) in (\S+) with (\S+)$"), "drop {0} {1} {2}"),
    ],
}
AGENTBOARD_PDDL_DOMAINS = {"blockworld": "blocks", "gripper": "gripper"}
MISSING_PDDL_DOMAINS = ("barman", "tyreworld")


class AgentBoardPDDL(PDDLEnv):
    """PDDL with English facts and AgentBoard's action wording (blockworld -> blocks, gripper; see the module doc)."""

    name = "pddl"
    description = (
        "You are solving a planning problem. The state and the goal are lists of facts in plain English; each action "
        "can only be taken when its preconditions hold. Write one action per turn, e.g. 'pick up b', 'stack b on a', "
        "'unstack b from a', 'put down b', 'move from rooma to roomb', 'pick ball1 in rooma with left'; "
        "'check valid actions' lists the actions possible now."
    )

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        tasks: tuple[str, ...] | list[str] = ("blockworld", "gripper"),
        annotations: str | None = None,
    ) -> None:
        self.check_options({"tasks": tasks})
        super().__init__(max_steps=max_steps, split="test", tasks=[AGENTBOARD_PDDL_DOMAINS.get(t, t) for t in tasks])
        self.annotations = annotations  # PDDL progress is the goal-fact fraction either way (AgentBoard's metric)

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        tasks = options.get("tasks", ("blockworld", "gripper"))
        for t in [tasks] if isinstance(tasks, str) else tasks:
            if t in MISSING_PDDL_DOMAINS:
                raise EnvError(
                    f"AgentBoard's PDDL domain {t!r} is not shipped by pddlgym 0.0.7, so the agentboard suite cannot "
                    "play it offline; use blockworld and gripper."
                )
            if t not in AGENTBOARD_PDDL_DOMAINS and t not in AGENTBOARD_PDDL_DOMAINS.values():
                raise EnvError(f"Unknown AgentBoard PDDL domain {t!r}; use blockworld or gripper.")

    def _english(self, lit: Any) -> str | None:
        domain = self.task.lower()
        pred = lit.predicate.name.lower()
        if pred in _STATIC.get(domain, set()):
            return None
        args = [_obj(v) for v in lit.variables]
        if domain == "blocks" and pred in ("handempty", "handfull"):
            args = args[:0]
        template = _ENGLISH.get(domain, {}).get(pred)
        if template is None:
            return f"{pred.replace('-', ' ')} {' '.join(args)}.".replace(" .", ".")
        return template.format(*args)

    def _facts(self, lits: Any) -> str:
        return " ".join(sorted(s for s in (self._english(lit) for lit in lits) if s))

    def describe(self) -> str:
        return self._facts(self._state.literals)

    def _agentboard_text(self, lit: Any) -> str:
        name, args = lit.predicate.name.lower(), [_obj(v) for v in lit.variables]
        if self.task == "blocks":
            on = {_obj(x.variables[0]): _obj(x.variables[1]) for x in self._state.literals if x.predicate.name == "on"}
            return {
                "pickup": f"pick up {args[0]}",
                "putdown": f"put down {args[0]}",
                "stack": f"stack {args[0]} on {args[1]}" if len(args) > 1 else f"stack {args[0]}",
                "unstack": f"unstack {args[0]} from {on.get(args[0], '?')}",
            }.get(name, self.action_text(lit))
        if self.task == "gripper" and name == "move" and len(args) == 2:
            return f"move from {args[0]} to {args[1]}"
        if self.task == "gripper" and name in ("pick", "drop") and len(args) == 3:
            return f"{name} {args[0]} in {args[1]} with {args[2]}"
        return self.action_text(lit)

    def valid_actions(self) -> list[str]:
        if self._state is None:
            return []
        lits = [lit for lit in self._all_actions(self._state) if self._u._action_valid_test(self._state, lit)]
        return sorted(self._agentboard_text(lit) for lit in lits)

    def parse(self, action: str) -> Any | None:
        a = " ".join(normalize_action(action).split())
        for pattern, form in _WORDING.get(self.task, []):
            m = pattern.match(a)
            if m:
                return super().parse(form.format(*m.groups()))
        return super().parse(action)

    def expert_action(self) -> str | None:
        text = super().expert_action()
        if text is None:
            return None
        lit = super().parse(text)
        return self._agentboard_text(lit) if lit is not None else text

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        first = super().reset(AGENTBOARD_PDDL_DOMAINS.get(task, task) if task else None, seed)
        goal = self._facts(self._goal_literals())
        info = dict(first.info, suite="agentboard", progress_source="goal facts", valid_actions=self.valid_actions())
        info["action_descriptions"] = {}
        return EnvObservation(
            observation=self.describe(),
            instruction=f"The goal is to satisfy the following conditions: {goal}",
            available_actions=[*self._agentboard_forms(), "check valid actions"],
            info=info,
        )

    def _agentboard_forms(self) -> list[str]:
        return {
            "blocks": ["pick up <block>", "put down <block>", "stack <block> on <block>",
                       "unstack <block> from <block>"],
            "gripper": ["move from <room> to <room>", "pick <ball> in <room> with <gripper>",
                        "drop <ball> in <room> with <gripper>"],
        }.get(self.task, list(self._templates()))  # fmt: skip

    def step(self, action: str) -> EnvStep:
        if "check valid actions" in normalize_action(action) or normalize_action(action) == "check valid action":
            if self._done:
                raise EnvError("The PDDL episode is over (or not started); call reset(task, seed) first.")
            self._steps += 1
            self._done = self._steps >= self.max_steps
            return EnvStep(
                "Valid actions are: " + ", ".join(self.valid_actions()) + ".",
                done=self._done,
                success=False,
                progress=self._progress(),
                invalid=False,
                info={"steps": self._steps, "suite": "agentboard"},
            )
        st = super().step(action)  # its observation is "<feedback> <state>", the state in English (describe())
        return EnvStep(
            st.observation,
            done=st.done,
            success=st.success,
            progress=st.progress,
            invalid=st.invalid,
            info=dict(st.info, suite="agentboard"),
        )


# ====================================================================== ScienceWorld
_GOAL_LINE = re.compile(r"^\s*\d+\s+(true|false)\s+", re.I)


class AgentBoardScienceWorld(ScienceWorldEnv):
    """ScienceWorld with AgentBoard's simplifications, no early stop on `done`, and subgoal progress (module doc)."""

    name = "scienceworld"

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        split: str = "test",
        tasks: tuple[str, ...] | list[str] | None = None,
        annotations: str | None = None,
        jvm_options: str = DEFAULT_JVM_OPTIONS,
        gold: bool = False,
    ) -> None:
        kwargs: dict[str, Any] = {"tasks": tasks} if tasks else {}
        super().__init__(
            max_steps=max_steps,
            split=split,  # type: ignore[arg-type]
            simplification=SCIENCEWORLD_SIMPLIFICATION,
            jvm_options=jvm_options,
            gold=gold,
            **kwargs,
        )
        self.annotations = annotations
        self._rows = load_annotations(annotations, "scienceworld") if annotations else None
        self._patterns: _PatternProgress | None = None
        self.progress_source = "score"

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        ScienceWorldEnv.check_options(options)
        ann = options.get("annotations")
        if ann:
            load_annotations(ann, "scienceworld")

    def _goal_progress(self) -> float | None:
        """Fraction of ScienceWorld's sequential subgoals completed, or None when it does not report them."""
        try:
            text = self._env.get_goal_progress()
        except Exception:  # py4j errors; the score is used instead
            return None
        section = str(text).split("Unordered", 1)[0]
        flags = [m.group(1).lower() == "true" for m in (_GOAL_LINE.match(ln) for ln in section.splitlines()) if m]
        return sum(flags) / len(flags) if flags else None

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        first = super().reset(task, seed)
        row = None
        if self._rows is not None:
            row = next((r for r in self._rows if r.get("task") == self.task and r.get("variation") == self.variation),
                       None)  # fmt: skip
        self._patterns = _PatternProgress(_subgoal_paths(row)) if row is not None else None
        if self._patterns is not None:
            self.progress_source = "annotations"
        else:
            self.progress_source = "subgoals" if self._goal_progress() is not None else "score"
        self._best = 0.0
        info = dict(first.info, suite="agentboard", progress_source=self.progress_source,
                    simplification=SCIENCEWORLD_SIMPLIFICATION)  # fmt: skip
        return EnvObservation(first.observation, first.instruction, first.available_actions, info)

    def step(self, action: str) -> EnvStep:
        if self._done:
            raise EnvError("The ScienceWorld episode is over (or not started); call reset(task, seed) first.")
        self._steps += 1
        a = normalize_action(action)
        if a in ("reset task", "reset"):
            obs, score, info = "Resetting the task is not allowed.", None, {}
        else:
            obs, _, _, info = self._env.step(a)
            if re.match(r"^Ambiguous request", obs or ""):
                obs, _, _, info = self._env.step("0")
            score = info.get("score")
        obs = (obs or "").strip()
        invalid = obs == "No known action matches that input." or score is None or obs.startswith("Resetting")
        self._follow_gold(a, invalid)
        success = bool(score is not None and score >= 100)
        if self._patterns is not None:
            self._patterns.update(obs)
            now = self._patterns.progress
        elif self.progress_source == "subgoals":
            now = self._goal_progress() or 0.0
        else:
            now = max(0.0, float(score or 0)) / 100.0
        self._best = max(self._best, 1.0 if success else now)
        # No early stop on ScienceWorld's done (AgentBoard ignores it): only success or the step bound end an episode.
        self._done = success or self._steps >= self.max_steps
        return EnvStep(
            obs,
            done=self._done,
            success=success,
            progress=self._best,
            invalid=invalid,
            info={"score": score, "steps": self._steps, "suite": "agentboard", "progress_source": self.progress_source},
        )
