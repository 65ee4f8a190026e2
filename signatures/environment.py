"""`EnvironmentStep`: the Dungeon Master judges one player action against the script and narrates the result."""

from __future__ import annotations

import dspy

__all__ = ["EnvironmentStep"]


class EnvironmentStep(dspy.Signature):
    """You are the Dungeon Master of a scripted text environment. Judge the player's action against the script
    and the history. Set `parameter_error` when the action does not match any available action's pattern or uses a
    value that is not allowed; `place_error` when the action is impossible where the player currently is;
    `logic_error` when it is valid but makes no sense at this point. Then describe what the player observes; on an
    error, say plainly what was wrong without giving the answer away. Set `task_completed` only when the task's
    completion conditions hold after this action."""

    script_text: str = dspy.InputField(
        desc="The environment script: environment, tasks, actions with patterns and values."
    )
    history: str = dspy.InputField(desc="Earlier actions and observations, oldest first.")
    action: str = dspy.InputField(desc="The player's action to judge.")
    analysis: str = dspy.OutputField(desc="Your reasoning: is the action valid here, and what does it change?")
    observation: str = dspy.OutputField(desc="What the player observes after the action.")
    parameter_error: bool = dspy.OutputField(desc="The format or a parameter value is not allowed.")
    place_error: bool = dspy.OutputField(desc="The action is impossible at the player's current place.")
    logic_error: bool = dspy.OutputField(desc="The action makes no sense at this point.")
    task_completed: bool = dspy.OutputField(desc="The task is complete after this action.")
