"""What the agentboard suite's environments share: AgentBoard's subgoal-pattern match and annotation files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine.errors import EnvError

__all__ = ["SCIENCEWORLD_SIMPLIFICATION", "load_annotations", "match_pattern"]

SCIENCEWORLD_SIMPLIFICATION = "selfWateringFlowerPots,openContainers,openDoors,noElectricalAction"


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
