"""Agent policies for evaluation and on-policy synthesis: a multi-turn chat agent and a DSPy-program agent.

Both follow one small protocol: `agent.start(task, environment, actions)` opens an episode session, and
`session.act(observation)` returns an `AgentAction` (thought, action, raw text, failure reason, tokens).
A reply that cannot be parsed becomes an action of None with the reason recorded, never an exception, so the
evaluation counts it as an invalid step.

* `ChatAgent(lm)` talks to the LM in the shared chat format of `refine.formats` (system = instructions + environment
  + actions, user = observations, assistant = "Thought: ...\\nAction: ..."). A distilled student is trained on exactly
  that format, so this is how it must be evaluated.
* `ProgramAgent(lm)` is a DSPy module over the `PlayerAct` signature (environment, goal, actions, history ->
  thought, action); its prompt can be optimized with any DSPy optimizer and it runs with any adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dspy

from refine.data import storable_text
from refine.errors import ConfigError
from refine.formats import AGENT_INSTRUCTIONS, format_first_user, format_system, parse_assistant
from refine.imports import import_object
from refine.lm.failures import raise_if_auth_failure
from refine.signatures.player import PlayerAct

__all__ = ["AgentAction", "AgentSession", "ChatAgent", "ProgramAgent", "describe_actions", "resolve_agent"]

logger = logging.getLogger(__name__)


@dataclass
class AgentAction:
    """One agent turn. `action` is None when the reply held no usable action; `error` then says why."""

    thought: str
    action: str | None
    raw: str
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AgentSession(Protocol):
    def act(self, observation: str) -> AgentAction: ...


def describe_actions(actions: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[str]:
    """Action lines for a prompt: 'form: description' when a description is known, else the form.

    Example:
        >>> describe_actions(["look", "take <obj>"], {"take <obj>": "pick something up"})
        ['look', 'take <obj>: pick something up']
    """
    descriptions = descriptions or {}
    return [f"{a}: {descriptions[a]}" if descriptions.get(a) else a for a in actions]


def _tokens(tracker: Any) -> tuple[int, int]:
    prompt = completion = 0
    for usage in (tracker.get_total_tokens() or {}).values():
        prompt += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    return prompt, completion


def _text(output: Any) -> str:
    """The reply's text, made storable: a lone surrogate would fail the run store and every later LM request."""
    if isinstance(output, str):
        return storable_text(output)
    if isinstance(output, Mapping):
        return storable_text(str(output.get("text") or output.get("content") or ""))
    return storable_text(str(output or ""))


class _ChatSession:
    def __init__(self, agent: ChatAgent, task: str, system: str, seed: int | None = None) -> None:
        self.agent = agent
        self.task = task
        self.seed = seed
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        self._cut = 0  # index of the oldest recent message kept once the history outgrew the window (0: no cut yet)

    def _window(self) -> list[dict[str, str]]:
        """The system message, the first user turn (it holds the task) and the most recent exchanges.

        Messages alternate (system, user, assistant, user, ...). Once more than `max_turns` recent turns accumulate,
        the oldest are dropped down to `max_turns // 2`, and the window then grows again: the prompt keeps a stable
        prefix for several turns, so the engine reuses its KV cache instead of recomputing the whole window at every
        turn (which a window sliding by one turn would force).
        """
        keep = self.agent.max_turns
        if keep is None or (not self._cut and len(self.messages) <= 2 + 2 * keep):
            return list(self.messages)
        if not self._cut or len(self.messages) - self._cut > 2 * keep - 1:
            self._cut = len(self.messages) - (2 * max(1, keep // 2) - 1)
        return self.messages[:2] + self.messages[self._cut :]

    def _request(self) -> Any:
        from dspy.lm15 import Config, Message, Request

        # The explicit-Request call path does not merge the LM's defaults, so pass them on ourselves.
        kw = {
            **{k: v for k, v in getattr(self.agent.lm, "kwargs", {}).items() if v is not None},
            **self.agent.lm_kwargs,
        }
        config = Config(**{k: kw[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed") if k in kw})
        window = self._window()
        messages = [
            Message.user(m["content"]) if m["role"] == "user" else Message.assistant(m["content"]) for m in window[1:]
        ]
        return Request(model=self.agent.model, system=window[0]["content"], messages=messages, config=config)

    def _call_options(self, request: Any) -> dict[str, Any]:
        """A sampling agent's episode seed as DSPy's `rollout_id`: episodes that see the same observations (a
        deterministic environment) then get their own samples instead of one cached answer, and a replayed episode
        gets its own answers back. Greedy decoding keeps one cache entry (the answer is the same anyway); the request
        itself is unchanged, so an in-process engine still batches episodes of different seeds together."""
        sampling = float(request.config.temperature or 0.0) > 0
        if self.seed is None or not sampling or not isinstance(self.agent.lm, dspy.LM):
            return {}
        return {"rollout_id": self.seed}

    def act(self, observation: str) -> AgentAction:
        first = len(self.messages) == 1
        self.messages.append(
            {"role": "user", "content": format_first_user(self.task, observation) if first else observation}
        )
        try:
            request = self._request()
            response = self.agent.lm(request, **self._call_options(request))
        except Exception as exc:  # any LM failure becomes a recorded failed turn, not a crashed episode
            raise_if_auth_failure(exc, self.agent.lm)  # ...except a refused key, which ends the run
            logger.warning("LM call failed: %s", exc)
            self.messages.append({"role": "assistant", "content": ""})
            return AgentAction("", None, "", error=f"lm error: {type(exc).__name__}: {exc}"[:500])
        raw = _text(getattr(response, "text", None) if not isinstance(response, list) else (response or [""])[0])
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "input_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "output_tokens", 0) or 0)
        thought, action = parse_assistant(raw)
        self.messages.append({"role": "assistant", "content": raw})
        error = None
        if action is None:
            error = "no 'Action:' line in the reply" if raw.strip() else "empty reply"
        return AgentAction(thought, action, raw, error, prompt_tokens, completion_tokens)


class ChatAgent:
    """A multi-turn chat agent in the shared Thought/Action format.

    Args:
        lm: A `dspy.LM` (e.g. `refine.lm.get_lm("embedded")` or `get_lm("local/<student dir>")`).
        instructions: The agent instructions at the top of the system message.
        max_turns: Most recent (user, assistant) exchanges kept in the prompt besides the first one (None = all); past
            it, the oldest are dropped down to half of it at once, so prompts keep a reusable prefix.
        lm_kwargs: Extra call arguments (e.g. `max_tokens`, `temperature`).

    Example:
        >>> from refine.testing import ScriptedLM
        >>> lm = ScriptedLM(lambda fields, inputs, messages: "Thought: the door\\nAction: open door")
        >>> session = ChatAgent(lm).start("Leave.", "A room.", ["open door"])
        >>> session.act("You are in a room.").action
        'open door'
    """

    name = "chat"

    def __init__(
        self,
        lm: Any,
        *,
        instructions: str = AGENT_INSTRUCTIONS,
        max_turns: int | None = 8,
        lm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if lm is None:
            raise ConfigError("ChatAgent needs an LM, e.g. ChatAgent(refine.lm.get_lm('embedded')).")
        self.lm = lm
        self.instructions = instructions
        self.max_turns = max_turns
        self.lm_kwargs = dict(lm_kwargs or {})

    @property
    def model(self) -> str:
        return str(getattr(self.lm, "model", "") or "")

    def start(self, task: str, environment: str, actions: Sequence[str], seed: int | None = None) -> _ChatSession:
        """Open an episode; `seed` (the episode's) keeps the samples of episodes apart when the agent samples."""
        return _ChatSession(self, task, format_system(environment, actions, self.instructions), seed)


class _ProgramSession:
    def __init__(
        self, agent: ProgramAgent, task: str, environment: str, actions: Sequence[str], seed: int | None = None
    ) -> None:
        self.agent = agent
        self.inputs = {"environment": environment, "goal": task, "actions": "\n".join(f"- {a}" for a in actions)}
        self.history: list[str] = []
        self.seed = seed

    def _call_config(self) -> dict[str, Any]:
        """As `_ChatSession._call_options`: a sampling predictor's calls carry the episode seed as `rollout_id`."""
        lm = self.agent.act.lm or dspy.settings.lm
        sampling = float((getattr(lm, "kwargs", None) or {}).get("temperature") or 0.0) > 0
        if self.seed is None or not sampling or not isinstance(lm, dspy.LM):
            return {}
        return {"rollout_id": self.seed}

    def act(self, observation: str) -> AgentAction:
        from dspy.utils.usage_tracker import UsageTracker

        self.history.append(f"Observation: {observation}")
        keep = self.agent.max_history
        history = self.history if keep is None else self.history[-(2 * keep + 1) :]
        tracker = UsageTracker()
        try:
            with dspy.context(usage_tracker=tracker, trace=[]):
                pred = self.agent(**self.inputs, history="\n".join(history), config=self._call_config())
        except Exception as exc:  # adapter parse errors and LM failures are recorded, not raised
            raise_if_auth_failure(exc, self.agent.act.lm or dspy.settings.lm)  # ...except a refused key: the run ends
            self.history.append("Action: (none)")
            return AgentAction("", None, "", error=f"{type(exc).__name__}: {exc}"[:500])
        prompt_tokens, completion_tokens = _tokens(tracker)
        thought = _text(getattr(pred, "thought", ""))
        action = _text(getattr(pred, "action", "")).strip() or None
        # A model may answer "Action: go north" inside the action field; keep the action itself.
        if action is not None:
            action = parse_assistant(action)[1] or action
        self.history.append(f"Action: {action or '(none)'}")
        raw = f"Thought: {thought}\nAction: {action or ''}"
        error = None if action else "empty action field"
        return AgentAction(thought, action, raw, error, prompt_tokens, completion_tokens)


class ProgramAgent(dspy.Module):
    """A DSPy-program agent: one `dspy.Predict(PlayerAct)` per step over the episode's history.

    Args:
        lm: The LM for the predictor (None: the LM configured with `dspy.configure`).
        adapter: The adapter (None: `refine.lm.default_adapter(lm)`, i.e. grammar-constrained for in-process models).
        max_history: Most recent (action, observation) pairs kept in the history input (None = all).

    The predictor is a normal DSPy predictor: `agent.save(path)` / `agent.load(path)` and every optimizer work.
    """

    name = "program"

    def __init__(self, lm: Any = None, *, adapter: Any = None, max_history: int | None = 10) -> None:
        super().__init__()
        self.act = dspy.Predict(PlayerAct)
        if lm is not None:
            self.act.set_lm(lm)
        self.adapter = adapter
        self.max_history = max_history

    @property
    def model(self) -> str:
        lm = self.act.lm or dspy.settings.lm
        return str(getattr(lm, "model", "") or "")

    def forward(
        self, environment: str, goal: str, actions: str, history: str, config: dict[str, Any] | None = None
    ) -> dspy.Prediction:
        """One step: the predictor over the episode so far; `config` is passed to it (per-call LM settings)."""
        adapter = self.adapter
        extra = {"config": config} if config else {}
        if adapter is None:
            lm = self.act.lm or dspy.settings.lm
            if lm is not None:
                from refine.lm import default_adapter

                adapter = default_adapter(lm)
        if adapter is None:
            return self.act(environment=environment, goal=goal, actions=actions, history=history, **extra)
        with dspy.context(adapter=adapter):
            return self.act(environment=environment, goal=goal, actions=actions, history=history, **extra)

    def start(self, task: str, environment: str, actions: Sequence[str], seed: int | None = None) -> _ProgramSession:
        """Open an episode; `seed` (the episode's) keeps the samples of episodes apart when the LM samples."""
        return _ProgramSession(self, task, environment, actions, seed)


def resolve_agent(spec: str, lm: str | None = None, **lm_kwargs: Any) -> ChatAgent | ProgramAgent | Any:
    """Build an agent from a command-line spec.

    * `chat` -> `ChatAgent` on `lm` (default "embedded");
    * `program` -> `ProgramAgent` on `lm`; `program:<file.json>` also loads a saved (optimized) agent state;
    * `package.module:attr` -> `attr(lm)` (a factory receiving the `dspy.LM`, or None) returning an agent;
    * anything else is an LM spec for `refine.lm.resolve_lm` (`embedded`, `local/<dir>`, `hf/<repo>`, a LiteLLM
      string, `py:package.module:attr`) -> `ChatAgent`.
    """
    from refine.lm import resolve_lm

    def _lm(model: str | None) -> Any:
        return resolve_lm(model or "embedded", **lm_kwargs)

    if spec == "chat":
        return ChatAgent(_lm(lm))
    if spec == "program" or spec.startswith("program:"):
        agent = ProgramAgent(_lm(lm))
        path = spec.partition(":")[2]
        if path:
            if not Path(path).exists():
                raise ConfigError(f"Saved agent {path!r} does not exist; pass a file written by ProgramAgent.save().")
            agent.load(path)
        return agent
    module, sep, _ = spec.partition(":")
    if sep and "." in module and not Path(spec).exists() and "/" not in module:
        factory = import_object(spec, "agent factory", form="package.module:factory")
        return factory(_lm(lm) if lm else None)
    return ChatAgent(_lm(spec))
