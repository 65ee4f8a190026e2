"""The chat format shared by synthesis exports, distillation and evaluation agents.

Training rows and evaluation prompts must agree exactly, or a distilled student is evaluated on a format it never
saw. The convention (AgentTuning/AgentBoard style):

* system: the agent instructions, the task environment and the available actions;
* user: an observation from the environment (the first one includes the task);
* assistant: ``Thought: <thought>\\nAction: <action>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "AGENT_INSTRUCTIONS",
    "format_assistant",
    "format_first_user",
    "format_system",
    "parse_assistant",
]

AGENT_INSTRUCTIONS = (
    "You are an agent acting in a text environment. At each turn, read the observation, think about what to do, "
    "then take exactly one action. Answer in the format:\nThought: <your reasoning>\nAction: <one action>\n"
    "If an action fails, read the feedback, work out what went wrong and correct your next action."
)

_ACTION_RE = re.compile(r"^\s*action\s*[:：]\s*(.*)$", re.I | re.M)
_THOUGHT_RE = re.compile(r"^\s*thought\s*[:：]\s*(.*?)(?=^\s*action\s*[:：]|\Z)", re.I | re.M | re.S)


def format_system(environment: str, actions: Iterable[str] | str, instructions: str = AGENT_INSTRUCTIONS) -> str:
    """System message: instructions, the environment description and the available actions."""
    acts = actions if isinstance(actions, str) else "\n".join(f"- {a}" for a in actions)
    parts = [instructions.strip()]
    if environment.strip():
        parts.append(f"Environment:\n{environment.strip()}")
    if acts.strip():
        parts.append(f"Available actions:\n{acts.strip()}")
    return "\n\n".join(parts)


def format_first_user(task: str, observation: str) -> str:
    """First user message: the task, then the first observation."""
    return f"Task: {task.strip()}\nObservation: {observation.strip()}"


def format_assistant(thought: str, action: str) -> str:
    """Assistant message for one player turn."""
    return f"Thought: {thought.strip()}\nAction: {action.strip()}"


def parse_assistant(text: str) -> tuple[str, str | None]:
    """Split an assistant message into (thought, action); action is None when no `Action:` line exists.

    Example:
        >>> parse_assistant("Thought: the key opens it\\nAction: open door")
        ('the key opens it', 'open door')
        >>> parse_assistant("I am not sure")
        ('I am not sure', None)
    """
    m = _ACTION_RE.search(text)
    action = m.group(1).strip() if m else None
    if action == "":
        action = None
    t = _THOUGHT_RE.search(text)
    if t:
        thought = t.group(1).strip()
    else:
        thought = (text[: m.start()] if m else text).strip()
    return thought, action
