"""Signatures of the Reflexion loop (Shinn et al., 2023): act in an environment with lessons from earlier trials,
and after a failed trial reflect on what went wrong."""

from __future__ import annotations

import dspy

__all__ = ["ReflectOnTrial", "ReflexionAct"]


class ReflexionAct(dspy.Signature):
    """You are an agent in a text environment. Choose the single next action that moves you towards the goal.
    Use exactly one of the available actions, and apply the lessons from earlier trials."""

    instruction: str = dspy.InputField(desc="The goal of the episode.")
    available_actions: list[str] = dspy.InputField(desc="The actions the environment accepts.")
    reflections: list[str] = dspy.InputField(desc="Lessons learned in earlier failed trials (may be empty).")
    history: str = dspy.InputField(desc="This trial so far: actions taken and what the environment answered.")
    observation: str = dspy.InputField(desc="The latest observation.")
    thought: str = dspy.OutputField(desc="Short reasoning about what to do next.")
    action: str = dspy.OutputField(desc="Exactly one available action.")


class ReflectOnTrial(dspy.Signature):
    """The trial failed. Diagnose the mistake that caused the failure and write one concrete lesson (a plan for the
    next trial) in one or two sentences."""

    instruction: str = dspy.InputField(desc="The goal of the episode.")
    history: str = dspy.InputField(desc="The failed trial: actions taken and what the environment answered.")
    reflections: list[str] = dspy.InputField(desc="Lessons from earlier trials.")
    reflection: str = dspy.OutputField(desc="What went wrong and what to do differently next time.")
