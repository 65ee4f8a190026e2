"""Fixtures for the synthesis tests: a tea-making script, correct and faulty trajectories, and a fake teacher LM.

The fake teacher (`teacher_respond`) answers every AgentRefine signature through `refine.testing.ScriptedLM`, so
the programs, the synth CLI (`--lm py:tests.test_synth_support:make_lm`) and the reliability tests run offline.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from refine.data import ActionSpec, Script, Trajectory, Turn

__all__ = ["bad_turns", "good_turns", "make_flaky_lm", "make_lm", "tea_script", "teacher_respond"]


def tea_script(persona: str = "a tea lover") -> Script:
    return Script(
        persona=persona,
        environment=f"A small kitchen with a kettle, a cup, a teabag and a tap. It belongs to {persona}.",
        tasks=["make a cup of tea"],
        completion_conditions=["the cup holds hot tea"],
        actions=[
            ActionSpec(
                name="take",
                description="pick up an object",
                pattern=r"^take (?P<obj>\w+)$",
                parameters={"obj": ["kettle", "cup", "teabag"]},
            ),
            ActionSpec(
                name="fill",
                description="fill a container",
                pattern=r"^fill (?P<obj>\w+) at (?P<source>\w+)$",
                parameters={"obj": ["kettle"], "source": ["tap"]},
            ),
            ActionSpec(
                name="boil", description="boil water", pattern=r"^boil (?P<obj>\w+)$", parameters={"obj": ["kettle"]}
            ),
            ActionSpec(
                name="pour",
                description="pour into",
                pattern=r"^pour (?P<obj>\w+) into (?P<target>\w+)$",
                parameters={"obj": ["kettle"], "target": ["cup"]},
            ),
        ],
    )


def _p(action: str, thought: str = "") -> Turn:
    return Turn(role="player", thought=thought or f"I should {action}.", action=action)


def _dm(obs: str, *, param: bool = False, place: bool = False, logic: bool = False, done: bool = False) -> Turn:
    return Turn(
        role="dm",
        thought="judging",
        observation=obs,
        parameter_error=param,
        place_error=place,
        logic_error=logic,
        task_completed=done,
    )


def good_turns() -> list[Turn]:
    """Two error -> fix episodes (a disallowed value, then a wrong order), ending with the task completed."""
    return [
        _p("take kettle"),
        _dm("You hold the kettle."),
        _p("fill kettle at sink"),
        _dm("There is no sink here; use the tap.", param=True),
        _p("fill kettle at tap"),
        _dm("The kettle is full."),
        _p("pour kettle into cup"),
        _dm("The water is cold; boil it first.", logic=True),
        _p("boil kettle"),
        _dm("The water boils."),
        _p("pour kettle into cup"),
        _dm("The cup holds hot tea.", done=True),
    ]


def bad_turns(kind: str) -> list[Turn]:
    """Faulty variants of `good_turns`, each breaking exactly one rule."""
    t = good_turns()
    if kind == "unflagged_param":  # the DM misses a disallowed value
        t[3] = t[3].model_copy(update={"parameter_error": False, "place_error": True})
    elif kind == "false_param":  # the DM flags a valid action as a parameter error
        t[1] = t[1].model_copy(update={"parameter_error": True})
    elif kind == "few_refinements":
        t = t[:6] + t[8:]
    elif kind == "not_completed":
        t[-1] = t[-1].model_copy(update={"task_completed": False})
    elif kind == "early_completion":
        t[5] = t[5].model_copy(update={"task_completed": True})
    elif kind == "order":
        t = t[1:]
    else:
        raise ValueError(kind)
    return t


def turn_drafts(turns: list[Turn]) -> list[dict[str, Any]]:
    return [
        {
            "role": u.role,
            "thought": u.thought,
            "action": u.action or "",
            "observation": u.observation or "",
            "parameter_error": u.parameter_error,
            "place_error": u.place_error,
            "logic_error": u.logic_error,
            "task_completed": u.task_completed,
        }
        for u in turns
    ]


def script_draft(script: Script) -> dict[str, Any]:
    return {
        "environment": script.environment,
        "tasks": script.tasks,
        "completion_conditions": script.completion_conditions,
        "actions": [
            {
                "name": a.name,
                "description": a.description,
                "pattern": a.pattern,
                "parameters": [{"name": k, "values": v} for k, v in a.parameters.items()],
            }
            for a in script.actions
        ],
    }


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 4


def teacher_respond(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any]:
    """A deterministic teacher keyed on a hash of the script: bucket 2 never completes the task (rejected after
    every attempt), bucket 3 has too few refinements on the first attempt (fixed on the retry), others are correct."""
    if "script" in fields:
        return {"script": script_draft(tea_script(inputs.get("persona", "someone")))}
    if "turns" in fields:
        # An empty `feedback` may come back as the prompt's trailing instruction (ScriptedEngine strips before it
        # splits that off), so "first attempt" means: no verifier feedback, which always starts with "Attempt".
        first = not inputs.get("feedback", "").strip().startswith("Attempt")
        bucket = _bucket(inputs.get("script_text", ""))
        if bucket == 2:
            turns = bad_turns("not_completed")  # rejected on every attempt
        elif bucket == 3 and first:
            turns = bad_turns("few_refinements")  # fixed on the retry
        else:
            turns = good_turns()
        return {"turns": turn_drafts(turns)}
    if "diagnosis" in fields:
        return {"diagnosis": "The action used a value that is not allowed."}
    if "analysis" in fields:  # DM step of the interactive program
        from refine.verify import match_action

        _, _, problems = match_action(tea_script(), inputs.get("action", ""))
        done = inputs.get("action", "").strip() == "pour kettle into cup" and "boils" in inputs.get("history", "")
        return {
            "analysis": "checked",
            "observation": "Not allowed." if problems else "Done.",
            "parameter_error": bool(problems),
            "place_error": False,
            "logic_error": False,
            "task_completed": done and not problems,
        }
    if "action" in fields:
        return {"thought": "next", "action": "take kettle"}
    return {f: "" for f in fields}


def make_lm() -> Any:
    """Factory used by the CLI tests: `refine synth --lm py:tests.test_synth_support:make_lm`."""
    from refine.testing import ScriptedLM

    latency = float(os.environ.get("REFINE_FAKE_LATENCY", "0"))
    return ScriptedLM(teacher_respond, model="fake/teacher", latency=latency)


def make_flaky_lm() -> Any:
    """A teacher failing ~30% of calls (timeouts, rate limits, malformed output), retried by DSPy."""
    from refine.testing import FlakyEngine, ScriptedLM

    rate = float(os.environ.get("REFINE_FAKE_FAILURE_RATE", "0.3"))
    engine = FlakyEngine(teacher_respond, failure_rate=rate, seed=int(os.environ.get("REFINE_FAKE_SEED", "0")))
    return ScriptedLM(teacher_respond, model="fake/flaky", engine=engine, num_retries=3)


def test_fixture_trajectory_is_accepted_and_variants_are_not() -> None:
    from refine.verify import verify_trajectory

    assert verify_trajectory(Trajectory(script=tea_script(), turns=good_turns())).ok
    for kind in ("unflagged_param", "false_param", "few_refinements", "not_completed", "early_completion", "order"):
        assert not verify_trajectory(Trajectory(script=tea_script(), turns=bad_turns(kind))).ok, kind


def perfect_teacher(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any]:
    """Like `teacher_respond`, but every trajectory is correct."""
    if "turns" in fields:
        return {"turns": turn_drafts(good_turns())}
    return teacher_respond(fields, inputs, messages)
