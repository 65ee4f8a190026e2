"""Signatures of the Self-Refine loop (Madaan et al., 2023): draft an output, criticise it, rewrite it."""

from __future__ import annotations

import dspy

__all__ = ["DraftOutput", "RefineOutput", "SelfFeedback"]


class DraftOutput(dspy.Signature):
    """Complete the task. Write only the requested output, with no commentary."""

    task: str = dspy.InputField(desc="What to produce, with any constraints it must meet.")
    output: str = dspy.OutputField(desc="The complete output for the task.")


class SelfFeedback(dspy.Signature):
    """Review the output for the task. List every concrete problem (wrong facts, missed constraints, format
    errors) and how to fix each one. Mark it satisfactory only if nothing needs to change."""

    task: str = dspy.InputField(desc="The task the output should complete.")
    output: str = dspy.InputField(desc="The current output.")
    feedback: str = dspy.OutputField(desc="Actionable problems and fixes, or 'none' when the output is right.")
    is_satisfactory: bool = dspy.OutputField(desc="True when the output needs no further change.")


class RefineOutput(dspy.Signature):
    """Rewrite the output so that it fixes every problem named in the feedback, keeping what was already right."""

    task: str = dspy.InputField(desc="The task the output should complete.")
    output: str = dspy.InputField(desc="The previous output.")
    feedback: str = dspy.InputField(desc="Problems found in the previous output and how to fix them.")
    refined_output: str = dspy.OutputField(desc="The improved, complete output.")
