"""`GenerateScript`: the teacher writes an environment script (world, goal, actions with verification regexes).

The LM-facing models here are deliberately small and flat so that a grammar can force a small model to fill them;
`draft_to_script` maps them onto the `refine.data.Script` used everywhere else.
"""

from __future__ import annotations

from typing import Any

import dspy
from pydantic import BaseModel, Field

from refine.data import ActionSpec, Script

__all__ = ["ActionDraft", "GenerateScript", "ParameterDraft", "ScriptDraft", "draft_to_script", "render_script"]


def _len(n: int) -> dict[str, Any]:
    # Grammar-only bounds: they reach the JSON schema (and so constrained decoding, which then always finishes
    # within max_tokens) but are not validated, so a capable LM writing longer text is not rejected for it.
    return {"json_schema_extra": {"maxLength": n}}


def _items(n: int, length: int) -> dict[str, Any]:
    return {"maxItems": n, "items": {"type": "string", "maxLength": length}}


class ParameterDraft(BaseModel):
    """One parameter of an action: the regex group name and every value it may take."""

    name: str = Field(description="Name of the named group in the action's pattern, e.g. 'place'.", **_len(16))
    values: list[str] = Field(
        description="Every allowed value of this parameter, e.g. ['kitchen', 'garden'].",
        json_schema_extra={"maxItems": 4, "items": {"type": "string", "maxLength": 20}},
    )


class ActionDraft(BaseModel):
    """One available action as written by the LM."""

    name: str = Field(description="Short unique action name, e.g. 'go'.", **_len(20))
    description: str = Field(description="What the action does, for the player.", **_len(60))
    pattern: str = Field(
        description=r"Regex matching the whole action string, e.g. '^go to (?P<place>\w+)$'.", **_len(60)
    )
    parameters: list[ParameterDraft] = Field(
        description="One entry per named group of the pattern.", json_schema_extra={"maxItems": 2}
    )


class ScriptDraft(BaseModel):
    """An environment script as written by the LM."""

    environment: str = Field(
        description="Where the player is and what is around: places, objects, people.", **_len(200)
    )
    tasks: list[str] = Field(description="What the player must achieve.", json_schema_extra=_items(2, 80))
    completion_conditions: list[str] = Field(
        description="Observable conditions that mean the tasks are done.", json_schema_extra=_items(2, 80)
    )
    actions: list[ActionDraft] = Field(
        description="The actions the player may take.", json_schema_extra={"minItems": 1, "maxItems": 4}
    )


class GenerateScript(dspy.Signature):
    """Write the script of a small text-adventure environment in the world of the given persona.

    The script describes the environment (places, objects, characters), the task the player must complete, the
    conditions that show the task is complete, and the available actions. For every action give a regular
    expression `pattern` that matches the whole action string, with one named group (?P<name>...) per parameter,
    and list every allowed value of each parameter. Keep it small and consistent: 3-6 actions, every object and
    place used by the task appears in the environment and among the allowed values, and the task needs several
    actions in a meaningful order. If `feedback` lists problems of an earlier attempt, fix all of them.
    """

    persona: str = dspy.InputField(desc="Who the environment is about; pick a setting this person would live in.")
    feedback: str = dspy.InputField(desc="Problems found in the previous attempt (empty on the first attempt).")
    script: ScriptDraft = dspy.OutputField(desc="The environment script.")


def draft_to_script(draft: ScriptDraft | Script | dict, persona: str = "") -> Script:
    """Map an LM-written `ScriptDraft` (or a dict of one) onto a `refine.data.Script`.

    Raises:
        pydantic.ValidationError: the draft does not have the script's shape.
    """
    if isinstance(draft, Script):
        return draft if draft.persona or not persona else draft.model_copy(update={"persona": persona})
    if isinstance(draft, dict):
        draft = ScriptDraft.model_validate(draft)
    actions = [
        ActionSpec(
            name=a.name.strip(),
            description=a.description.strip(),
            pattern=a.pattern,
            parameters={p.name.strip(): [str(v) for v in p.values] for p in a.parameters},
        )
        for a in draft.actions
    ]
    return Script(
        persona=persona,
        environment=draft.environment.strip(),
        tasks=[t.strip() for t in draft.tasks if t.strip()],
        completion_conditions=[c.strip() for c in draft.completion_conditions if c.strip()],
        actions=actions,
    )


def render_script(script: Script, *, patterns: bool = True) -> str:
    """The script as prompt text for the DM/player roles (patterns shown only to the DM side)."""
    lines = [f"Environment: {script.environment}", "Tasks:"]
    lines += [f"- {t}" for t in script.tasks]
    if script.completion_conditions:
        lines.append("Completion conditions:")
        lines += [f"- {c}" for c in script.completion_conditions]
    lines.append("Available actions:")
    for a in script.actions:
        params = "; ".join(f"{k} in {v}" for k, v in a.parameters.items())
        line = f"- {a.name}: {a.description}"
        if patterns:
            line += f" | pattern: {a.pattern}"
        if params:
            line += f" | allowed values: {params}"
        lines.append(line)
    return "\n".join(lines)
