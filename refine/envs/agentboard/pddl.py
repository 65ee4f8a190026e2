"""AgentBoard's PDDL: facts and goals in plain English, its action wording, `check valid actions`."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from refine.envs._common import normalize_action
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.envs.pddl import PDDLEnv, _obj
from refine.errors import EnvError

__all__ = ["AGENTBOARD_PDDL_DOMAINS", "MISSING_PDDL_DOMAINS", "AgentBoardPDDL"]

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
    _PLANS: ClassVar[dict[tuple[str, str, int], list[str] | None]] = {}  # shortest plans by (split, domain, problem)
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
        info.update(self._flag_solvable())
        info["action_descriptions"] = {}
        return EnvObservation(
            observation=self.describe(),
            instruction=f"The goal is to satisfy the following conditions: {goal}",
            available_actions=[*self._agentboard_forms(), "check valid actions"],
            info=info,
        )

    def _flag_solvable(self) -> dict[str, Any]:
        """`expert_steps` (a shortest plan's length, kept for the expert) and `solvable` (it fits the step bound);
        nothing when no plan is found within the planner's state budget."""
        key = (self.split, self.task, self.problem)
        if key not in self._PLANS:  # once per problem and process (a 6-block problem takes ~20 s to search)
            try:
                self._PLANS[key] = self.plan()
            except EnvError:
                self._PLANS[key] = None
        plan = self._PLANS[key]
        if plan is None:
            return {}
        if len(plan) <= self.max_steps:
            self._cache_plan(plan)  # the expert's plan, each step checked by pddlgym
        return {"expert_steps": len(plan), "solvable": len(plan) <= self.max_steps}

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
