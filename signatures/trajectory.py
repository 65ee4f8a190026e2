"""`PlayTrajectory`: the paper's one-shot mode, where one call writes the whole Dungeon-Master/player trajectory."""

from __future__ import annotations

from typing import Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field, RootModel

from refine.data import Turn

__all__ = ["PlayTrajectory", "TurnDraft", "TurnList", "drafts_to_turns"]


class TurnDraft(BaseModel):
    """One turn as written by the LM (flat: every field present on every turn)."""

    role: Literal["player", "dm"] = Field(description="'player' acts, 'dm' answers the player's last action.")
    thought: str = Field(description="The speaker's reasoning for this turn.", json_schema_extra={"maxLength": 60})
    action: str = Field(
        description="Player turns: the exact action string. DM turns: ''.", json_schema_extra={"maxLength": 40}
    )
    observation: str = Field(
        description="DM turns: what the player observes. Player turns: ''.", json_schema_extra={"maxLength": 80}
    )
    parameter_error: bool = Field(description="DM turns: the action's format or a parameter value is not allowed.")
    place_error: bool = Field(description="DM turns: the action is impossible where the player currently is.")
    logic_error: bool = Field(description="DM turns: the action is valid but makes no sense at this point.")
    task_completed: bool = Field(description="DM turns: the task is complete after this action.")


class TurnList(RootModel[list[TurnDraft]]):
    """The turns of a trajectory. The bound is grammar-only (not validated): room for 7 player/DM pairs."""

    model_config = ConfigDict(json_schema_extra={"maxItems": 14})


class PlayTrajectory(dspy.Signature):
    """Play a whole game in the scripted environment, writing both roles: Player and Dungeon Master (DM).

    Turns alternate: player, dm, player, dm, ... The player thinks, then takes one action written exactly in the
    form of an available action's pattern. The DM judges the player's last action against the script: it sets
    `parameter_error` when the action does not match any pattern or uses a value that is not allowed,
    `place_error` when it is impossible where the player is, `logic_error` when it makes no sense yet; then it
    describes what the player observes. The player must make at least two realistic mistakes, each flagged by the
    DM, and fix each one in the next action after reading the DM's feedback. The last DM turn sets
    `task_completed` with no error flags. If `feedback` lists problems of an earlier attempt, fix all of them.
    """

    script_text: str = dspy.InputField(
        desc="The environment script: environment, tasks, actions with patterns and values."
    )
    feedback: str = dspy.InputField(desc="Problems found in the previous attempt (empty on the first attempt).")
    turns: TurnList = dspy.OutputField(desc="The whole trajectory, starting with a player turn.")


def drafts_to_turns(drafts: TurnList | list[TurnDraft] | list[dict]) -> list[Turn]:
    """Map LM-written turns onto `refine.data.Turn` (error flags and completion kept on DM turns only)."""
    if isinstance(drafts, TurnList):
        drafts = drafts.root
    turns = []
    for d in drafts:
        if isinstance(d, dict):
            d = TurnDraft.model_validate(d)
        if d.role == "player":
            turns.append(Turn(role="player", thought=d.thought.strip(), action=d.action.strip() or None))
        else:
            turns.append(
                Turn(
                    role="dm",
                    thought=d.thought.strip(),
                    observation=d.observation.strip() or None,
                    parameter_error=d.parameter_error,
                    place_error=d.place_error,
                    logic_error=d.logic_error,
                    task_completed=d.task_completed,
                )
            )
    return turns
