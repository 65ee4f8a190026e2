"""DSPy signatures of refinement tuning, one module per role (importable as `refine.signatures`)."""

from refine.signatures.environment import EnvironmentStep
from refine.signatures.feedback import InterpretFeedback
from refine.signatures.player import PlayerAct
from refine.signatures.refine_action import RefineAction
from refine.signatures.script import (
    ActionDraft,
    GenerateScript,
    ParameterDraft,
    ScriptDraft,
    draft_to_script,
    render_script,
)
from refine.signatures.trajectory import PlayTrajectory, TurnDraft, drafts_to_turns

__all__ = [
    "ActionDraft",
    "EnvironmentStep",
    "GenerateScript",
    "InterpretFeedback",
    "ParameterDraft",
    "PlayTrajectory",
    "PlayerAct",
    "RefineAction",
    "ScriptDraft",
    "TurnDraft",
    "draft_to_script",
    "drafts_to_turns",
    "render_script",
]
