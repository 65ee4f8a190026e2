"""Fake LMs whose answers improve when a predictor's instructions or demos change, shared by the optimize tests.

* Arithmetic (Self-Refine): the drafter answers "What is a + b?" right when its system prompt contains MAGIC or
  demos precede the question; otherwise only when a + b is even (so the baseline scores 0.5 on balanced sets).
* Toy room (Reflexion): the actor plays the right next action only when its instructions contain MAGIC; otherwise
  it keeps trying "take lamp", so every trial fails.
* Proposers (MIPROv2 `proposed_instruction`, GEPA `new_instruction`) always suggest an instruction with MAGIC.
"""

from __future__ import annotations

import re
from typing import Any

import dspy

from refine.testing import ScriptedLM

MAGIC = "carefully"
NEW_INSTRUCTION = "Work carefully: check every step before you answer."
ROOM_PLAN = ("take key", "open door", "go door")


def _system(messages: list[dict[str, str]]) -> str:
    return messages[0]["content"] if messages and messages[0]["role"] == "system" else ""


def respond(fields: list[str], inputs: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
    """Answer any signature (unknown fields get "ok") following the rules in the module docstring."""
    system = _system(messages)
    knows = MAGIC in system.lower()
    out: dict[str, Any] = dict.fromkeys(fields, "ok")
    if "output" in fields and "task" in inputs:
        a, b = map(int, re.findall(r"-?\d+", inputs["task"])[:2])
        good = knows or len(messages) > 2 or (a + b) % 2 == 0
        out["output"] = str(a + b if good else a + b + 1)
    if "is_satisfactory" in fields:
        out.update(feedback="none", is_satisfactory=True)
    if "refined_output" in fields:
        out["refined_output"] = inputs.get("output", "")
    if "action" in fields:
        done = inputs.get("history", "").count("> ")
        out.update(thought="next", action=ROOM_PLAN[min(done, 2)] if knows else "take lamp")
    if "reflection" in fields:
        out["reflection"] = "The lamp is not here; try the key."
    for f in ("proposed_instruction", "new_instruction"):
        if f in fields:
            out[f] = NEW_INSTRUCTION
    return out


def make_lm(**kwargs: Any) -> ScriptedLM:
    """The fake task/reflection LM (also usable as `--lm py:tests.test_optimize_support:make_lm`)."""
    kwargs.setdefault("max_tokens", 200)
    return ScriptedLM(respond, **kwargs)


def arith_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """`n` Self-Refine rows {"task", "output"}; half of them have an even sum."""
    rows = []
    for i in range(start, start + n):
        a, b = i, i + 3 + (i % 2)
        rows.append({"task": f"What is {a} + {b}?", "output": str(a + b)})
    return rows


def test_fake_baseline_is_half_right_and_instructions_fix_it():
    from refine.programs.self_refine import build_graph

    program = build_graph().compile()
    rows = arith_rows(6)
    with dspy.context(lm=make_lm()):
        plain = [program(task=r["task"]).output == r["output"] for r in rows]
        for _, p in program.named_predictors():
            p.signature = p.signature.with_instructions(NEW_INSTRUCTION)
        tuned = [program(task=r["task"]).output == r["output"] for r in rows]
    assert sum(plain) == 3
    assert all(tuned)


def test_fake_demos_fix_the_drafter():
    from refine.programs.self_refine import build_graph

    program = build_graph().compile()
    row = arith_rows(1)[0]  # odd sum: wrong without help
    with dspy.context(lm=make_lm()):
        assert program(task=row["task"]).output != row["output"]
        program.nodes["draft"].demos = [dspy.Example(task="What is 1 + 1?", output="2")]
        assert program(task=row["task"]).output == row["output"]
