"""The data model of refinement tuning: scripts, turns, trajectories, verdicts and run records (pydantic v2).

Everything that crosses a module boundary, lands in a run directory or is exported is one of these models,
so JSON round-trips are exact (`Model.model_validate_json(m.model_dump_json()) == m`).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ActionSpec",
    "Provenance",
    "RunRecord",
    "Script",
    "Trajectory",
    "Turn",
    "Verdict",
    "content_id",
    "jsonable",
    "storable",
    "storable_text",
]

ERROR_FLAGS: tuple[str, ...] = ("parameter_error", "place_error", "logic_error")


_SURROGATES = re.compile("[\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with every lone surrogate (e.g. `\\ud800` in an LM reply) replaced by U+FFFD, so it can be encoded,
    stored and sent to an LM again; other text is returned unchanged (the same object).

    Example:
        >>> storable_text("ok \\ud800 fine")
        'ok \\ufffd fine'
    """
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def storable(value: Any) -> Any:
    """`storable_text` applied to every string inside dicts (keys too), lists and tuples; other values unchanged."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(storable(v) for v in value)
    return value


def content_id(payload: Any, length: int = 16) -> str:
    """A stable hex id for any JSON-serialisable payload (keys sorted), used as a resume key."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:length]


def jsonable(value: Any) -> Any:
    """`value` with pydantic models dumped to JSON types, inside dicts (keys made strings), lists and tuples.

    Example:
        >>> jsonable({1: [Verdict(ok=True)], "k": (2, 3)})
        {'1': [{'ok': True, 'reasons': [], 'stage': 'trajectory', 'checks': 0}], 'k': [2, 3]}
    """
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # LM text may hold lone surrogates: made storable here, it can be hashed, written and sent back to an LM.
        return storable(value)


class ActionSpec(_Model):
    """One action the player may take in a script's environment.

    Example:
        >>> spec = ActionSpec(name="go", description="move to a place", pattern=r"^go to (?P<place>.+)$",
        ...                   parameters={"place": ["kitchen", "garden"]})
        >>> spec.parameter_names()
        ['place']
    """

    name: str = Field(description="Unique action name, e.g. 'go'.")
    description: str = Field(default="", description="What the action does, shown to the player.")
    pattern: str = Field(
        description="Verification regex over the full action string; each parameter is a named group (?P<name>...)."
    )
    parameters: dict[str, list[str]] = Field(
        default_factory=dict, description="Allowed values of each parameter (named group) of `pattern`."
    )

    def parameter_names(self) -> list[str]:
        """Names of the regex groups of `pattern`, in order (no compilation of untrusted regex needed)."""
        import regex

        return regex.findall(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>", self.pattern)


class Script(_Model):
    """An environment script written from a persona: the world, its goal and the actions available."""

    persona: str = Field(default="", description="The persona the script was written from.")
    environment: str = Field(description="Text description of the environment the player is in.")
    tasks: list[str] = Field(description="The goal, as one or more tasks the player must complete.")
    completion_conditions: list[str] = Field(
        default_factory=list, description="Conditions under which the tasks count as completed."
    )
    actions: list[ActionSpec] = Field(description="Available actions with verification patterns.")

    @property
    def goal(self) -> str:
        return "; ".join(self.tasks)

    def action_named(self, name: str) -> ActionSpec | None:
        return next((a for a in self.actions if a.name == name), None)

    def describe_actions(self) -> str:
        """Action list as shown to a player (name, description, allowed values)."""
        lines = []
        for a in self.actions:
            params = "; ".join(f"{k} in {v}" for k, v in a.parameters.items())
            lines.append(f"- {a.name}: {a.description}" + (f" ({params})" if params else ""))
        return "\n".join(lines)


class Turn(_Model):
    """One turn of a trajectory.

    Player turns carry `thought` + `action`. DM/environment turns carry `thought` + `observation`, the three error
    flags judging the *preceding* player action, and `task_completed`. `loss` says whether the turn is trained:
    erroneous player turns stay in the context but get `loss=False`.
    """

    role: Literal["player", "dm"]
    thought: str = ""
    action: str | None = None
    observation: str | None = None
    parameter_error: bool = False
    place_error: bool = False
    logic_error: bool = False
    task_completed: bool = False
    loss: bool = True

    @property
    def has_error(self) -> bool:
        return self.parameter_error or self.place_error or self.logic_error

    def error_flags(self) -> dict[str, bool]:
        return {f: getattr(self, f) for f in ERROR_FLAGS}


class Provenance(_Model):
    """Where a record came from: enough to reproduce or audit it."""

    persona: str = ""
    seed: int | None = None
    models: dict[str, str] = Field(default_factory=dict, description="Role (teacher, agent, ...) -> model id.")
    program_hash: str = ""
    usage: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Model id -> {'prompt_tokens': n, 'completion_tokens': n, 'calls': n}."
    )
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def total_tokens(self) -> int:
        return sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in self.usage.values())


class Verdict(_Model):
    """Result of rule-based verification. `ok` is True exactly when `reasons` is empty."""

    ok: bool
    reasons: list[str] = Field(default_factory=list)
    stage: Literal["script", "trajectory", "parse"] = "trajectory"
    checks: int = Field(default=0, description="Number of rule checks evaluated (for a [0, 1] score).")

    @field_validator("reasons")
    @classmethod
    def _strip(cls, v: list[str]) -> list[str]:
        return [r.strip() for r in v if r.strip()]

    @model_validator(mode="after")
    def _ok_iff_no_reasons(self) -> Verdict:
        # A rejection without a reason cannot be acted on (no GEPA feedback, no audit trail); an acceptance with
        # reasons is contradictory. Build verdicts as Verdict(ok=not reasons, reasons=reasons, ...).
        if self.ok and self.reasons:
            raise ValueError(f"Verdict(ok=True) must have no reasons, got {self.reasons}; use ok=not reasons.")
        if not self.ok and not self.reasons:
            raise ValueError("Verdict(ok=False) needs at least one reason saying why it was rejected.")
        return self

    @property
    def score(self) -> float:
        """1.0 when accepted, else the fraction of checks that passed (never 1.0 for a rejection)."""
        if self.ok:
            return 1.0
        if self.checks <= 0:
            return 0.0
        return max(0.0, min(0.99, 1.0 - len(self.reasons) / self.checks))

    def feedback(self) -> str:
        """Human-readable feedback (used as GEPA feedback text)."""
        if self.ok:
            return f"The {self.stage} passed every check."
        return f"The {self.stage} was rejected:\n" + "\n".join(f"- {r}" for r in self.reasons)


class Trajectory(_Model):
    """A script plus the turns played in it, with provenance and (once verified) a verdict."""

    id: str = ""
    script: Script
    turns: list[Turn] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)
    verdict: Verdict | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id([self.script.model_dump(), [t.model_dump() for t in self.turns]]))

    def player_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "player"]

    def judging_turn(self, index: int) -> Turn | None:
        """The DM turn that judges the player turn at `index`: the next DM turn before any other player turn.

        A player turn followed directly by another player turn (or by nothing) has no judgement.
        """
        for u in self.turns[index + 1 :]:
            if u.role == "dm":
                return u
            if u.role == "player":
                return None
        return None

    def mark_losses(self) -> Trajectory:
        """Set `loss=False` on every player turn whose judging DM turn flags an error; `True` on the others."""
        turns = [t.model_copy() for t in self.turns]
        for i, t in enumerate(turns):
            if t.role != "player":
                continue
            judge = self.judging_turn(i)
            t.loss = not (judge is not None and judge.has_error)
        return self.model_copy(update={"turns": turns})

    def refinement_episodes(self) -> int:
        """Number of error -> fix episodes: an erroneous player action followed by a player action without error."""
        episodes, pending = 0, False
        for i, t in enumerate(self.turns):
            if t.role != "player":
                continue
            judge = self.judging_turn(i)
            if judge is not None and judge.has_error:
                pending = True
            elif pending:
                episodes += 1
                pending = False
        return episodes


class RunRecord(BaseModel):
    """One line of a run's `accepted.jsonl` / `rejected.jsonl`: the trajectory and how it was made.

    Every synthesis path writes this model and every reader validates it, so a record is never guessed at
    (`trajectory` is required; there is no "the record is the trajectory" fallback). The verdict lives on the
    trajectory. Writers may add their own context fields (index, persona, env, seconds, ...): they are kept.

    Example:
        >>> rec = RunRecord(key="k0", accepted=False, trajectory=Trajectory(script=Script(
        ...     environment="", tasks=[], actions=[])), error="LMError: down")
        >>> RunRecord.model_validate_json(rec.model_dump_json()) == rec
        True
    """

    model_config = ConfigDict(extra="allow")

    key: str = Field(description="The item's resume key (unique in the run).")
    accepted: bool = Field(description="True when the trajectory passed verification.")
    trajectory: Trajectory
    attempts: list[Any] = Field(default_factory=list, description="Every attempt of every stage, with its reason.")
    usage: dict[str, dict[str, int]] = Field(default_factory=dict, description="Model id -> token and call counts.")
    error: str | None = Field(default=None, description="The exception that ended the item, if any.")

    @property
    def verdict(self) -> Verdict | None:
        return self.trajectory.verdict

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the run directory (the store adds nothing but checks `key`)."""
        return self.model_dump(mode="json")
