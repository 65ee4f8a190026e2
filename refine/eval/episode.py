"""One evaluation episode: an agent plays a text environment for at most `max_steps` steps, and the record of it
(success, best progress, invalid and repeated steps, tokens, the trajectory). Re-exported by `refine.eval`.

An episode whose LM call failed (not a reply that could not be parsed, but the call itself: a dead server, a
timeout) on `LM_FAILURE_TURNS` turns in a row ends there with `lm_failed` set: it measured the server, not the
agent, so `evaluate` keeps it out of the numbers and leaves it pending for `--resume`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from refine import interrupt
from refine.errors import RefineError

__all__ = ["LM_FAILURE_TURNS", "lm_failure", "run_episode"]

#: Consecutive turns whose LM call failed after which an episode ends as `lm_failed` (pending, not a result).
LM_FAILURE_TURNS = 3
_CONTENT_ERRORS = ("AdapterParseError", "LMOutputError", "Parse")


def lm_failure(error: str | None) -> str | None:
    """The LM error of a turn whose LM call failed (`ChatAgent`'s "lm error: ..." or a `ProgramAgent` turn's
    exception other than a parse failure), without the prefix; None for a usable or merely unparseable reply.

    >>> lm_failure("lm error: APIConnectionError: connection refused")
    'APIConnectionError: connection refused'
    >>> lm_failure("no 'Action:' line in the reply") is None
    True
    """
    if not error:
        return None
    if error.startswith("lm error: "):
        return error.removeprefix("lm error: ")
    name = error.split(":", 1)[0]
    if name.isidentifier() and name.endswith(("Error", "Exception", "Timeout")):
        return None if any(c in name for c in _CONTENT_ERRORS) else error
    return None


def _takes_seed(agent: Any) -> bool:
    """Whether `agent.start` accepts the episode's seed (ChatAgent does; a user's agent may not)."""
    try:
        return "seed" in inspect.signature(agent.start).parameters
    except (TypeError, ValueError):
        return False


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and " ".join(a.lower().split()) == " ".join(b.lower().split())


def run_episode(
    agent: Any,
    env: Any,
    spec: Mapping[str, Any],
    max_steps: int,
    ready: Callable[[], None] | None = None,
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Play one episode; returns its record (never raises for agent or environment failures: they are recorded).

    Args:
        ready: called once the environment is reset and the agent started, right before its first action.
        on_step: called after each step with `{"key", "t", "prompt_tokens", "completion_tokens"}` (that step's).
        stop: polled before each step; when it returns True the episode is abandoned (`interrupt.Interrupted`).
            Without it, a stop request (Ctrl-C, SIGTERM) abandons the episode the same way.
    """
    stop = stop or interrupt.requested
    from refine.programs.agent import describe_actions

    started = time.perf_counter()
    record: dict[str, Any] = {
        "env": spec["env"],
        "variant": spec.get("variant", "base"),
        "index": spec.get("index", 0),
        "seed": spec.get("seed"),
        "task": None,
        "instruction": "",
        "success": False,
        "progress": 0.0,
        "steps": 0,
        "invalid_steps": 0,
        "repeated_steps": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "error": None,
        "initial_observation": "",
        "trajectory": [],
    }
    try:
        first = env.reset(seed=spec.get("seed"))
    except RefineError as exc:
        record["error"] = f"reset failed: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    except Exception as exc:  # third-party environment failure
        record["error"] = f"reset failed: {type(exc).__name__}: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    record["task"] = getattr(env, "task", None) or first.info.get("task")
    record["instruction"] = first.instruction
    record["initial_observation"] = first.observation
    if "solvable" in first.info:  # the env's flag: its expert reaches the goal within the step bound
        record["solvable"] = bool(first.info["solvable"])
        record["expert_steps"] = first.info.get("expert_steps")
    actions = describe_actions(first.available_actions, first.info.get("action_descriptions"))
    try:
        start_with_env = getattr(agent, "start_with_env", None)  # reference agents (expert, random) read the env
        if callable(start_with_env):
            session = start_with_env(env, first)
        else:
            args = (first.instruction, getattr(env, "description", ""), actions)
            session = agent.start(*args, seed=spec.get("seed")) if _takes_seed(agent) else agent.start(*args)
    except Exception as exc:  # a broken agent is a recorded failure of this episode
        record["error"] = f"agent failed to start: {type(exc).__name__}: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    if ready is not None:
        ready()
    observation = first.observation
    best = 0.0
    prev_action: str | None = None
    prev_feedback: str | None = None
    lm_errors: list[str] = []
    for t in range(max_steps):
        if stop():
            raise interrupt.Interrupted()
        act = session.act(observation)
        record["prompt_tokens"] += act.prompt_tokens
        record["completion_tokens"] += act.completion_tokens
        step: dict[str, Any] = {"t": t, "observation": observation, "thought": act.thought, "action": act.action}
        done = False
        if act.action is None:
            feedback = (
                f"Your reply could not be used ({act.error}). Answer with one line 'Thought: ...' and one line "
                "'Action: <one action>'."
            )
            step.update(invalid=True, reason=act.error, raw=act.raw[:2000])
        else:
            try:
                result = env.step(act.action)
            except Exception as exc:  # an environment crash ends the episode, recorded
                record["error"] = f"step failed: {type(exc).__name__}: {exc}"
                step.update(invalid=True, reason=record["error"], feedback="", progress=best, repeated=False)
                record["trajectory"].append(step)
                break
            feedback = result.observation
            best = max(best, float(result.progress))
            done = bool(result.done)
            record["success"] = record["success"] or bool(result.success)
            step.update(invalid=bool(result.invalid))
        repeated = _same(act.action, prev_action) and _same(feedback, prev_feedback)
        step.update(feedback=feedback, progress=best, repeated=repeated, done=done)
        record["trajectory"].append(step)
        record["invalid_steps"] += int(step["invalid"])
        record["repeated_steps"] += int(repeated)
        prev_action, prev_feedback = act.action, feedback
        observation = feedback
        if on_step is not None:
            on_step(
                {"key": spec.get("key"), "t": t, "prompt_tokens": act.prompt_tokens,
                 "completion_tokens": act.completion_tokens}
            )  # fmt: skip
        failure = lm_failure(act.error) if act.action is None else None
        lm_errors = [*lm_errors, failure] if failure else []
        if len(lm_errors) >= LM_FAILURE_TURNS:
            record["error"] = f"the LM failed on {len(lm_errors)} turns in a row: {lm_errors[-1]}"[:500]
            record["lm_failed"] = True
            break
        if done:
            break
    record["steps"] = len(record["trajectory"])
    record["progress"] = 1.0 if record["success"] else best
    record["wall_s"] = round(time.perf_counter() - started, 3)
    return record
