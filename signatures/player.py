"""`PlayerAct`: the agent's step, one thought and one action from the interaction so far."""

from __future__ import annotations

import dspy

__all__ = ["PlayerAct"]


class PlayerAct(dspy.Signature):
    """You are the player in a text environment. Read the task, the available actions and the history, think
    about what brings you closer to the task, then take exactly one action written in the form of one of the
    available actions, using only allowed values."""

    environment: str = dspy.InputField(desc="The environment description.")
    goal: str = dspy.InputField(desc="The task to complete.")
    actions: str = dspy.InputField(desc="The available actions and their allowed values.")
    history: str = dspy.InputField(desc="Earlier actions and observations, oldest first (empty at the start).")
    thought: str = dspy.OutputField(desc="Short reasoning about what to do next.")
    action: str = dspy.OutputField(desc="Exactly one action string.")
