"""`InterpretFeedback`: explain what went wrong with the last action and why, from the environment's feedback."""

from __future__ import annotations

import dspy

__all__ = ["InterpretFeedback"]


class InterpretFeedback(dspy.Signature):
    """The player's last action failed. From the environment's observation, the available actions and the
    history, explain precisely what went wrong (wrong format, a value that is not allowed, the wrong place, the
    wrong order) and what a correct next action must respect."""

    goal: str = dspy.InputField(desc="The task to complete.")
    actions: str = dspy.InputField(desc="The available actions and their allowed values.")
    history: str = dspy.InputField(desc="Earlier actions and observations, oldest first.")
    action: str = dspy.InputField(desc="The action that failed.")
    observation: str = dspy.InputField(desc="The environment's feedback on it.")
    diagnosis: str = dspy.OutputField(desc="What went wrong and why, and what the fix must respect.")
