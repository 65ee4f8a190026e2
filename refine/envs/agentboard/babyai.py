"""AgentBoard's BabyAI: its 28 test levels x 4 seeds, high-level actions compiled by BFS, one subgoal per step."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from refine.envs.agentboard.common import _PatternProgress, _subgoal_paths, load_annotations
from refine.envs.babyai import BabyAIEnv
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.errors import EnvError

__all__ = ["BABYAI_LEVELS", "BABYAI_SEEDS", "CHECK_ACTIONS", "AgentBoardBabyAI"]

# AgentBoard's BabyAI test levels (its level numbers 1-21, 24, 25, 27, 28, 29, 31, 32) and seeds.
BABYAI_LEVELS = (
    "GoToRedBallGrey", "GoToRedBall", "GoToRedBallNoDists", "GoToObjS6", "GoToLocalS8N7", "GoToObjMazeS7",
    "GoToImpUnlock", "GoToSeqS5R2", "GoToRedBlueBall", "GoToDoor", "GoToObjDoor", "Open", "OpenRedDoor",
    "OpenDoorLoc", "OpenRedBlueDoorsDebug", "OpenDoorsOrderN4Debug", "Pickup", "UnblockPickup", "PickupLoc",
    "PickupDistDebug", "PickupAbove", "Unlock", "UnlockLocalDist", "UnlockPickupDist", "BlockedUnlockPickup",
    "UnlockToUnlock", "FindObjS7", "KeyCorridorS6R3",
)  # fmt: skip
BABYAI_SEEDS = (1234, 1235, 1236, 1237)
CHECK_ACTIONS = "check available actions"

_BLOCKING = ("wall", "key", "ball", "box", "lava")
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid's direction vectors: right, down, left, up


class AgentBoardBabyAI(BabyAIEnv):
    """BabyAI with AgentBoard's high-level actions, level list, seeds and progress rules (see the module docstring).

    `reset(seed=i)` plays episode i of the 112 (level `BABYAI_LEVELS[i // 4 % 28]`, seed `1234 + i % 4`);
    `reset(task, seed)` with an explicit level resets it with `seed` as given.

    A level that terminates with reward 0 does not end the episode, as in AgentBoard (its `done` is cancelled while
    progress <= 0.5). It matters for OpenDoorsOrderN4Debug: minigrid's strict verifier of "open X, then open Y"
    (and "open Y after you open X") checks the toggle that opens X against Y too and reports a failure, though X was
    the right door; played on, opening Y then succeeds. `go to <object>` while already facing it is one step that
    changes nothing but lets the level verify the mission (BabyAI's bot would say `done` there).
    """

    name = "babyai"
    _NOOP = "done"  # minigrid's 'done' action, issued by `go to <object in front>`
    _PLAYS_ON_AFTER_FAILURE = True
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
                actions.setdefault(f"go to {label}", face or [6])  # already facing it: a step without effect
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
        if primitive == self._NOOP:
            return next((name for name, steps in self._high.items() if steps == [6]), None)
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
        if len(steps) == 1 and self._expert_queue and self._expert_queue[0] == _NAMES.get(steps[0], self._NOOP):
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
