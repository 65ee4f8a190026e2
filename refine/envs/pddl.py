"""PDDL planning problems (pddlgym: blocks, gripper, ...) as a text environment.

States and goals are shown as facts ("on(b, a)"), actions are written as text ("stack b a", "pick ball1 rooma left")
and mapped to pddlgym's ground action literals. An action whose preconditions do not hold is not applied and counts
as invalid, with the reason; so does text that names no action of the domain. Progress is the fraction of goal atoms
that hold. Train and test problems come from pddlgym's separate problem folders (`split`).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Literal

from refine.envs._common import require
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.errors import EnvError

__all__ = ["DEFAULT_TASKS", "PDDLEnv"]

Split = Literal["train", "test"]

DEFAULT_TASKS = ("blocks", "gripper")

# Readable argument names and descriptions for the domains AgentBoard also uses; other domains get generic ones.
_ACTION_HELP: dict[str, dict[str, tuple[str, str]]] = {
    "blocks": {
        "pickup": ("pickup <block>", "pick up a clear block from the table (the hand must be empty)"),
        "putdown": ("putdown <block>", "put the block you hold down on the table"),
        "stack": ("stack <block> <other block>", "put the block you hold on top of another clear block"),
        "unstack": ("unstack <block>", "take a clear block off the block it sits on (the hand must be empty)"),
    },
    "gripper": {
        "move": ("move <from room> <to room>", "move the robot from one room to another"),
        "pick": ("pick <ball> <room> <gripper>", "pick up a ball in the room with a free gripper"),
        "drop": ("drop <ball> <room> <gripper>", "drop a ball held by the gripper in the room"),
    },
}

DESCRIPTION = (
    "You are solving a classical planning problem. The state is a list of facts; each action changes some facts "
    "and can only be taken when its preconditions hold. Write one action per turn as its name followed by the "
    "object names, e.g. 'stack b a'."
)

_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def _obj(var: Any) -> str:
    return str(getattr(var, "name", var)).split(":")[0]


def _fact(lit: Any) -> str:
    return f"{lit.predicate.name}({', '.join(_obj(v) for v in lit.variables)})"


class PDDLEnv:
    """A pddlgym problem as a `TextEnv`.

    Args:
        max_steps: Episode bound (AgentBoard uses 30).
        split: "test" (default for evaluation) or "train" problems.
        tasks: Domain names used when `reset(task=None)` (a pddlgym id such as "PDDLEnvFerry-v0" also works).

    `reset(task, seed)` loads problem number `seed % number of problems` of the domain's split.
    """

    name = "pddl"
    description = DESCRIPTION

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        split: Split = "test",
        tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    ) -> None:
        if split not in ("train", "test"):
            raise EnvError(f"PDDL split must be 'train' or 'test', not {split!r}.")
        self.max_steps = max_steps
        self.split: Split = split
        self.tasks = tuple(tasks)
        self._pddlgym = require("pddlgym", "pddl")
        self._envs: dict[str, Any] = {}
        self._env: Any = None
        self._state: Any = None
        self._expert_cache: dict[Any, list[str]] = {}
        self._steps = 0
        self._done = True
        self.task = ""
        self.problem = -1

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Validate `split` and domain names against the domain files pddlgym ships, without importing it."""
        import importlib.util
        from pathlib import Path

        split = options.get("split", "test")
        if split not in ("train", "test"):
            raise EnvError(f"PDDL split must be 'train' or 'test', not {split!r}.")
        tasks = options.get("tasks")
        spec = importlib.util.find_spec("pddlgym")
        if tasks is None or spec is None or not spec.submodule_search_locations:
            return
        root = Path(next(iter(spec.submodule_search_locations))) / "pddl"
        for t in [tasks] if isinstance(tasks, str) else tasks:
            if not isinstance(t, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", t):
                raise EnvError(f"Bad PDDL domain name {t!r}; use one of pddlgym's domains, e.g. blocks, gripper.")
            if t.startswith("PDDLEnv"):
                continue
            name = t.lower().replace("-", "_")
            if not (root / f"{name}.pddl").exists():
                shipped = sorted(p.stem for p in root.glob("*.pddl"))[:12]
                raise EnvError(f"Unknown PDDL domain {t!r}; pddlgym ships e.g. {', '.join(shipped)}.")

    # ------------------------------------------------------------------ helpers
    def gym_id(self, task: str) -> str:
        if task.startswith("PDDLEnv"):
            return task
        camel = "".join(p.capitalize() for p in re.split(r"[_\-]", task))
        return f"PDDLEnv{camel}{'Test' if self.split == 'test' else ''}-v0"

    def _make(self, task: str) -> Any:
        if task not in self._envs:
            try:
                env = self._pddlgym.make(self.gym_id(task))
            except Exception as exc:  # gym raises several error types for unknown ids
                raise EnvError(
                    f"Unknown PDDL domain {task!r} ({self.gym_id(task)}: {exc}). Use one of pddlgym's domains, "
                    "e.g. blocks, gripper, ferry, hanoi."
                ) from exc
            self._envs[task] = env
        return self._envs[task]

    @property
    def _u(self) -> Any:
        return self._env.unwrapped

    def _all_actions(self, state: Any) -> Any:
        # Some domains' action spaces only enumerate applicable actions (valid_only=False is refused there).
        try:
            return self._env.action_space.all_ground_literals(state, valid_only=False)
        except AssertionError:
            return self._env.action_space.all_ground_literals(state, valid_only=True)

    def _ground_actions(self, state: Any) -> dict[tuple[str, ...], Any]:
        lits = self._all_actions(state)
        return {(lit.predicate.name.lower(), *(_obj(v).lower() for v in lit.variables)): lit for lit in lits}

    def action_text(self, lit: Any) -> str:
        """The text form of a ground action literal, e.g. 'stack b a'."""
        return " ".join([lit.predicate.name, *(_obj(v) for v in lit.variables)])

    def _templates(self) -> dict[str, str]:
        domain = self.task.lower()
        known = _ACTION_HELP.get(domain, {})
        out = {}
        for pred in sorted(self._env.action_space.predicates, key=lambda p: p.name):
            if pred.name in known:
                form, help_ = known[pred.name]
            else:
                form = " ".join([pred.name, *(f"<{t}>" for t in pred.var_types)])
                help_ = f"apply the {pred.name} action to {pred.arity} argument(s)"
            out[form] = help_
        return out

    def _goal_literals(self) -> list[Any]:
        goal = self._state.goal
        return list(getattr(goal, "literals", [goal]))

    def _progress(self) -> float:
        goals = self._goal_literals()
        return sum(1 for g in goals if g in self._state.literals) / max(1, len(goals))

    def describe(self) -> str:
        facts = sorted(_fact(lit) for lit in self._state.literals)
        return "Current state: " + "; ".join(facts) + "."

    def parse(self, action: str) -> Any | None:
        """Map text ('stack b a', 'stack(b, a)', 'stack b on a') to a ground action literal, or None."""
        tokens = [t.lower() for t in _TOKEN.findall(action.split(":")[0] if "(" not in action else action)]
        if not tokens:
            return None
        actions = self._ground_actions(self._state)
        objects = {_obj(o).lower() for o in self._state.objects}
        name = tokens[0].replace("-", "").replace("_", "")
        names = {k[0].replace("-", "").replace("_", ""): k[0] for k in actions}
        if name not in names:
            return None
        args = tuple(t for t in tokens[1:] if t in objects)
        return actions.get((names[name], *args))

    def plan(self, max_nodes: int = 200_000) -> list[str]:
        """A shortest plan from the current state (breadth-first search; for tests and on-policy teachers).

        Gripper is planned by its optimal strategy instead (drop what belongs here, fill the free grippers with balls
        bound for one room, carry them there: 3n - 1 steps for n balls, n even, between two rooms), since the state
        space of 10 balls is beyond a breadth-first search of `max_nodes` states.
        """
        from pddlgym.core import get_successor_state

        if self.task.lower() == "gripper":
            found = self._gripper_plan()
            if found is not None:
                return found
        u = self._u
        start = self._state
        frontier: deque[tuple[Any, list[str]]] = deque([(start, [])])
        seen = {start.literals}
        while frontier and len(seen) < max_nodes:
            state, path = frontier.popleft()
            if all(g in state.literals for g in getattr(state.goal, "literals", [state.goal])):
                return path
            for lit in self._all_actions(state):
                if not u._action_valid_test(state, lit):
                    continue
                nxt = u._handle_derived_literals(get_successor_state(state, lit, u.domain, inference_mode="infer"))
                if nxt.literals not in seen:
                    seen.add(nxt.literals)
                    frontier.append((nxt, [*path, self.action_text(lit)]))
        raise EnvError(f"No plan found for PDDL problem {self.task}#{self.problem} within {max_nodes} states.")

    def _gripper_plan(self, limit: int = 10_000) -> list[str] | None:
        """Gripper's optimal plan from here, worked out on the facts (pddlgym's successor function takes ~0.4 s a
        step on the large problems); None when the problem is not of that shape. The expert's cache then checks each
        step with pddlgym as it is followed (`_cache_plan`)."""
        facts = {(x.predicate.name.lower(), *(_obj(v) for v in x.variables)) for x in self._state.literals}
        goal = {(g.predicate.name.lower(), *(_obj(v) for v in g.variables)) for g in self._goal_literals()}
        dest = {g[1]: g[2] for g in goal if g[0] == "at" and len(g) == 3}
        robby_goal = next((g[1] for g in goal if g[0] == "at-robby"), None)
        room = next((f[1] for f in facts if f[0] == "at-robby"), None)
        at = {f[1]: f[2] for f in facts if f[0] == "at" and len(f) == 3}
        carried = {f[1]: f[2] for f in facts if f[0] == "carry" and len(f) == 3}
        free = sorted(f[1] for f in facts if f[0] == "free")
        if room is None or not dest:
            return None
        plan: list[str] = []
        for _ in range(limit):
            if all(at.get(b) == r for b, r in dest.items()) and robby_goal in (None, room):
                return plan
            drop = next((b for b in sorted(carried) if dest.get(b, room) == room), None)
            loose = sorted(b for b, r in at.items() if r == room and dest.get(b, room) != room)
            if drop is not None:
                gripper = carried.pop(drop)
                at[drop] = room
                free = sorted([*free, gripper])
                plan.append(f"drop {drop} {room} {gripper}")
            elif free and loose:
                bound = {dest[b] for b in carried if b in dest}
                ball = min(loose, key=lambda b: (bool(bound) and dest[b] not in bound, b))
                gripper = free.pop(0)
                del at[ball]
                carried[ball] = gripper
                plan.append(f"pick {ball} {room} {gripper}")
            else:
                if carried:
                    target = dest[min(b for b in carried if b in dest)]
                else:
                    away = sorted({r for b, r in at.items() if dest.get(b, r) != r})
                    target = away[0] if away else robby_goal
                if target is None or target == room:
                    return None
                plan.append(f"move {room} {target}")
                room = target
        return None

    def expert_action(self) -> str | None:
        """The next action of a shortest plan from the current state, or None (solved, or no plan found).

        Plans are searched once and cached along their states, so following the expert, or wasting a step on an
        invalid action (the state does not change), never searches again; only a valid off-plan action replans.
        """
        if self._state is None:
            return None
        key = self._state.literals
        if key not in self._expert_cache:
            try:
                self._cache_plan(self.plan()[: self.max_steps + 1])  # no step past the bound is ever asked for
            except EnvError:
                return None
        remaining = self._expert_cache.get(key) or []
        return remaining[0] if remaining else None

    def valid_actions(self) -> list[str]:
        """The ground actions whose preconditions hold in the current state, as text."""
        if self._state is None:
            return []
        lits = [lit for lit in self._all_actions(self._state) if self._u._action_valid_test(self._state, lit)]
        return sorted(self.action_text(lit) for lit in lits)

    def _cache_plan(self, plan: list[str]) -> None:
        from pddlgym.core import get_successor_state

        u, state = self._u, self._state
        for i, text in enumerate(plan):
            self._expert_cache[state.literals] = plan[i:]
            lit = next((x for x in self._all_actions(state) if self.action_text(x) == text), None)
            if lit is None:
                return
            state = u._handle_derived_literals(get_successor_state(state, lit, u.domain, inference_mode="infer"))
        self._expert_cache[state.literals] = []

    # ------------------------------------------------------------------ protocol
    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        seed = seed or 0
        task = task or self.tasks[seed % len(self.tasks)]
        self._env = self._make(task)
        self.task = task
        self.problem = seed % len(self._u.problems)
        self._env.fix_problem_index(self.problem)
        self._state, _ = self._env.reset()
        self._expert_cache = {}
        self._steps, self._done = 0, False
        goal = "; ".join(_fact(g) for g in self._goal_literals())
        return EnvObservation(
            observation=self.describe(),
            instruction=f"Reach a state where all of these facts hold: {goal}.",
            available_actions=list(self._templates()),
            info={
                "action_descriptions": self._templates(),
                "objects": sorted(_obj(o) for o in self._state.objects),
                "task": task,
                "problem": self.problem,
                "split": self.split,
            },
        )

    def step(self, action: str) -> EnvStep:
        if self._done:
            raise EnvError("The PDDL episode is over (or not started); call reset(task, seed) first.")
        self._steps += 1
        lit = self.parse(action)
        success = False
        if lit is None:
            invalid = True
            feedback = (
                f"'{action.strip()}' is not an action of this domain. Write an action like "
                f"{next(iter(self._templates()))!r} with object names from the state."
            )
        elif not self._u._action_valid_test(self._state, lit):
            invalid = True
            feedback = f"The action '{self.action_text(lit)}' is not applicable: its preconditions do not hold."
        else:
            invalid = False
            self._state, reward, done, _, _ = self._env.step(lit)
            success = bool(done and reward > 0)
            feedback = f"You did '{self.action_text(lit)}'." + (" The goal is reached." if success else "")
        self._done = success or self._steps >= self.max_steps
        return EnvStep(
            f"{feedback} {self.describe()}",
            done=self._done,
            success=success,
            progress=1.0 if success else self._progress(),
            invalid=invalid,
            info={"steps": self._steps},
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
