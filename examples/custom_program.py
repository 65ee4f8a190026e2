"""A custom refinement program in a few lines: script -> player act -> DM judges -> on error, diagnose and refine once.

The graph reuses the AgentRefine signatures and the verifier; `refine` handles validation, tracing, optimizers
(`named_predictors()` sees every node) and the CLI (`refine graph show examples.custom_program:build_graph`).

Run it offline with a scripted fake LM:
    python examples/custom_program.py
or with a real LM (any LiteLLM model string, or 'embedded'):
    python examples/custom_program.py --lm openai/gpt-4o-mini
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dspy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refine.graph import ProgramGraph
from refine.signatures import (
    EnvironmentStep,
    GenerateScript,
    InterpretFeedback,
    PlayerAct,
    RefineAction,
    draft_to_script,
    render_script,
)
from refine.verify import match_action


def build_graph() -> ProgramGraph:
    """persona -> script -> one act, judged by the DM; a flagged action is diagnosed and refined once."""

    def prepare(persona: str, script) -> dict:
        s = draft_to_script(script, persona=persona)
        return {
            "environment": s.environment,
            "goal": s.goal,
            "actions": s.describe_actions(),
            "script_text": render_script(s),
            "history": "",
            "parsed_script": s,
        }

    def check(parsed_script, action: str, parameter_error: bool) -> dict:
        problems = match_action(parsed_script, action)[2]
        return {"agrees": bool(problems) == bool(parameter_error), "problems": problems}

    g = ProgramGraph("act_then_refine", inputs=["persona"], defaults={"feedback": ""})
    g.add_node("script", dspy.Predict(GenerateScript))
    g.add_node(
        "prepare", prepare, outputs=["environment", "goal", "actions", "script_text", "history", "parsed_script"]
    )
    g.add_node("act", dspy.Predict(PlayerAct))
    g.add_node("judge", dspy.Predict(EnvironmentStep))
    g.add_node("diagnose", dspy.Predict(InterpretFeedback))
    g.add_node("refine", dspy.Predict(RefineAction))
    g.add_node("check", check, outputs=["agrees", "problems"])
    g.add_edge("script", "prepare")
    g.add_edge("prepare", "act")
    g.add_edge("act", "judge")
    g.add_edge("judge", "diagnose", condition="parameter_error")
    g.add_edge("judge", "check", condition="not parameter_error")
    g.add_edge("diagnose", "refine")
    g.add_edge("refine", "judge", max_iters=1)  # one refinement, then judge again
    return g


def _fake_lm():
    from refine.testing import ScriptedLM
    from tests.test_synth_support import perfect_teacher

    def respond(fields, inputs, messages):
        if "analysis" in fields:  # the DM flags the first (wrong) action, accepts the refined one
            wrong = inputs["action"] != "take kettle"
            return {
                "analysis": "checked",
                "observation": "There is no such thing." if wrong else "Taken.",
                "parameter_error": wrong,
                "place_error": False,
                "logic_error": False,
                "task_completed": False,
            }
        if "diagnosis" in fields:
            return {"diagnosis": "Only the kettle, the cup and the teabag can be taken."}
        if "action" in fields:
            refined = "diagnosis" in inputs
            return {
                "thought": "fixing it" if refined else "take something",
                "action": "take kettle" if refined else "take spoon",
            }
        return perfect_teacher(fields, inputs, messages)

    return ScriptedLM(respond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default=None, help="LM spec for refine.lm.get_lm (default: an offline fake)")
    parser.add_argument("--persona", default="a tea lover in a small flat")
    args = parser.parse_args()
    if args.lm:
        from refine.lm import default_adapter, get_lm

        lm = get_lm(args.lm)
        dspy.configure(lm=lm, adapter=default_adapter(lm))
    else:
        dspy.configure(lm=_fake_lm())
    program = build_graph().compile()
    print(build_graph().to_mermaid())
    out = program(persona=args.persona)
    print("actions:", [e.outputs.get("action") for e in out.graph_trace if e.node in ("act", "refine")])
    print("DM flags agree with the verifier:", out.agrees, out.problems)


if __name__ == "__main__":
    main()
