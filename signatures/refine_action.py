"""`RefineAction`: a corrected thought and action after a failed one, guided by the diagnosis."""

from __future__ import annotations

import dspy

__all__ = ["RefineAction"]


class RefineAction(dspy.Signature):
    """Your last action failed. Use the diagnosis to write a corrected action: think about the fix, then take
    exactly one action in the form of an available action, with allowed values only, that avoids the mistake."""

    environment: str = dspy.InputField(desc="The environment description.")
    goal: str = dspy.InputField(desc="The task to complete.")
    actions: str = dspy.InputField(desc="The available actions and their allowed values.")
    history: str = dspy.InputField(desc="Earlier actions and observations, oldest first.")
    diagnosis: str = dspy.InputField(desc="What went wrong with the failed action and why.")
    thought: str = dspy.OutputField(desc="Reasoning about the correction.")
    action: str = dspy.OutputField(desc="Exactly one corrected action string.")
