"""AgentBoard's ScienceWorld: its simplification string, no early stop on `done`, subgoal progress."""

from __future__ import annotations

import re
from typing import Any

from refine.envs._common import normalize_action
from refine.envs.agentboard.common import (
    SCIENCEWORLD_SIMPLIFICATION,
    _PatternProgress,
    _subgoal_paths,
    load_annotations,
)
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.envs.scienceworld import DEFAULT_JVM_OPTIONS, DEFAULT_TASKS, ScienceWorldEnv
from refine.errors import EnvError

__all__ = ["AGENTBOARD_TASKS", "AgentBoardScienceWorld"]

_GOAL_LINE = re.compile(r"^\s*\d+\s+(true|false)\s+", re.I)


def _electrical(task: str) -> bool:
    """ScienceWorld refuses these tasks under noElectricalAction (its own test: power-component, conductivity)."""
    return "power-component" in task or "conductivity" in task


# This project's ScienceWorld tasks without the electrical ones, which AgentBoard's simplification rules out.
AGENTBOARD_TASKS = tuple(t for t in DEFAULT_TASKS if not _electrical(t))


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
        gold: bool = True,  # the gold path (computed at reset) flags each episode solvable or not
    ) -> None:
        self.check_options({"tasks": tasks} if tasks else {})
        kwargs: dict[str, Any] = {"tasks": tasks or AGENTBOARD_TASKS}
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
        tasks = options.get("tasks") or ()
        for t in [tasks] if isinstance(tasks, str) else tasks:
            if _electrical(t):
                raise EnvError(
                    f"ScienceWorld task {t!r} needs electrical actions, which AgentBoard's simplification "
                    "(noElectricalAction) removes; leave it out with --suite agentboard."
                )
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
        if self.gold:  # the gold path is the expert: solvable when it fits the step bound
            info.update(expert_steps=len(self.gold_path), solvable=0 < len(self.gold_path) <= self.max_steps)
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
