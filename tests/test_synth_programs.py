"""The synthesis programs with a scripted fake teacher: verdicts, bounded regeneration, recorded parse failures,
interactive refinement over a real `TextEnv` with a separate agent LM, and the LLM Dungeon Master mode."""

from __future__ import annotations

import dspy
import pytest

from refine.envs.base import ToyEnv
from refine.errors import ConfigError
from refine.graph import GraphRunError
from refine.programs import AgentRefinePipeline, InteractiveRefine
from refine.programs.agentrefine import build_graph
from refine.programs_registry import load_graph
from refine.testing import ScriptedLM
from refine.verify import verifier_metric
from tests.test_synth_support import (
    bad_turns,
    good_turns,
    perfect_teacher,
    script_draft,
    tea_script,
    teacher_respond,
    turn_drafts,
)


def _run(pipe, respond, persona="a tea lover"):
    lm = ScriptedLM(respond)
    with dspy.context(lm=lm):
        return pipe(persona=persona, seed=7), lm


class TestAgentRefinePipeline:
    def test_accepts_a_correct_trajectory_with_provenance(self):
        out, lm = _run(AgentRefinePipeline(), perfect_teacher, "p0")
        traj = out.trajectory
        assert out.verdict.ok and traj.verdict == out.verdict
        assert [(a["stage"], a["ok"]) for a in out.attempts] == [("script", True), ("trajectory", True)]
        assert traj.provenance.persona == "p0" and traj.provenance.seed == 7
        assert traj.provenance.models == {"teacher": "fake/scripted"}
        assert [t.loss for t in traj.player_turns()] == [True, False, True, False, True, True]
        assert lm.calls == 2

    def test_failed_trajectory_is_regenerated_with_feedback(self):
        seen = []

        def respond(fields, inputs, messages):
            if "turns" in fields:
                seen.append(inputs["feedback"])
                first = len(seen) == 1
                return {"turns": turn_drafts(bad_turns("few_refinements") if first else good_turns())}
            return perfect_teacher(fields, inputs, messages)

        out, _ = _run(AgentRefinePipeline(), respond)
        assert out.verdict.ok
        assert [(a["stage"], a["ok"]) for a in out.attempts] == [
            ("script", True),
            ("trajectory", False),
            ("trajectory", True),
        ]
        assert out.attempts[1]["reasons"] == ["trajectory: 1 error -> fix episode(s), at least 2 required"]
        assert seen[1].startswith("Attempt 2 of 4. The previous trajectory was rejected for these reasons:")
        assert "at least 2 required" in seen[1]

    def test_gives_up_after_max_attempts(self):
        def respond(fields, inputs, messages):
            if "turns" in fields:
                return {"turns": turn_drafts(bad_turns("not_completed"))}
            return teacher_respond(fields, inputs, messages)

        out, lm = _run(AgentRefinePipeline(max_attempts=3), respond)
        assert not out.verdict.ok
        assert [a["stage"] for a in out.attempts] == ["script", "trajectory", "trajectory", "trajectory"]
        assert lm.calls == 4
        assert out.trajectory.verdict.reasons[0].startswith("trajectory: the last turn does not complete the task")

    def test_unparseable_output_is_a_recorded_failure_not_a_crash(self):
        def respond(fields, inputs, messages):
            if "script" in fields:
                return "this is not the requested format at all"
            return teacher_respond(fields, inputs, messages)

        out, _ = _run(AgentRefinePipeline(max_attempts=2), respond)
        assert not out.verdict.ok and out.verdict.stage == "parse"
        assert [a["stage"] for a in out.attempts] == ["script", "script"]
        assert all(a["error"].startswith("generate_script: AdapterParseError") for a in out.attempts)
        assert out.trajectory.turns == [] and out.trajectory.verdict.stage == "parse"

    def test_invalid_script_is_rejected_with_reasons_then_fixed(self):
        calls = []

        def respond(fields, inputs, messages):
            if "script" in fields:
                calls.append(inputs["feedback"])
                draft = script_draft(tea_script())
                if len(calls) == 1:
                    draft["actions"][0]["pattern"] = "^take (?P<obj>\\w+$"
                return {"script": draft}
            return perfect_teacher(fields, inputs, messages)

        out, _ = _run(AgentRefinePipeline(), respond)
        assert out.verdict.ok
        assert out.attempts[0]["stage"] == "script" and not out.attempts[0]["ok"]
        assert "does not compile" in out.attempts[0]["reasons"][0]
        assert "does not compile" in calls[1]

    def test_graph_is_valid_and_bounded(self):
        g = build_graph(max_attempts=4)
        g.validate()
        mermaid = g.to_mermaid()
        assert "check_script -.->|retry_script / max 3| generate_script" in mermaid
        assert load_graph("agentrefine").node_names == g.node_names
        with pytest.raises(ConfigError, match="max_attempts must be >= 1"):
            build_graph(max_attempts=0)

    def test_predictors_visible_to_optimizers_and_metric(self):
        pipe = AgentRefinePipeline()
        names = sorted(n for n, _ in pipe.named_predictors())
        assert names == ["nodes['generate_script']", "nodes['generate_trajectory']"]
        out, _ = _run(pipe, perfect_teacher, "p0")
        assert verifier_metric(dspy.Example(persona="p0"), out).score == 1.0


def _toy_agent(fields, inputs, messages):
    h = inputs.get("history", "")
    if "You take the key" not in h:
        return {"thought": "a lamp helps", "action": "take lamp"}
    if "open the door" not in h:
        return {"thought": "air", "action": "open window"}
    return {"thought": "out", "action": "go door"}


def _toy_teacher(fields, inputs, messages):
    if "diagnosis" in fields:
        return {"diagnosis": "That object is not useful here."}
    h = inputs.get("history", "")
    if "You take the key" not in h:
        return {"thought": "the key opens the door", "action": "take key"}
    return {"thought": "now the door", "action": "open door"}


class TestInteractiveRefine:
    def test_student_acts_teacher_refines_over_a_real_env(self):
        agent, teacher = ScriptedLM(_toy_agent, model="fake/student"), ScriptedLM(_toy_teacher, model="fake/teacher")
        prog = InteractiveRefine(env=ToyEnv, max_steps=10, agent_lm=agent)
        with dspy.context(lm=teacher):
            out = prog(seed=1)
        traj = out.trajectory
        assert out.success and out.verdict.ok
        assert [t.action for t in traj.player_turns()] == [
            "take lamp",
            "take key",
            "open window",
            "open door",
            "go door",
        ]
        assert [t.loss for t in traj.player_turns()] == [False, True, False, True, True]
        assert traj.provenance.models == {"agent": "fake/student", "teacher": "fake/teacher"}
        assert agent.calls == 3 and teacher.calls == 4  # 2 diagnoses + 2 refinements

    def test_step_bound_ends_the_run(self):
        lm = ScriptedLM(lambda f, i, m: {"thought": "look", "action": "look", "diagnosis": "x"})
        with dspy.context(lm=lm):
            out = InteractiveRefine(env=ToyEnv, max_steps=3)(seed=0)
        assert len(out.trajectory.player_turns()) == 3 and not out.success and not out.verdict.ok

    def test_llm_dungeon_master_over_a_script(self):
        def respond(fields, inputs, messages):
            if "analysis" in fields:
                return teacher_respond(fields, inputs, messages)
            h = inputs.get("history", "")
            plan = ["take kettle", "fill kettle at tap", "boil kettle", "pour kettle into cup"]
            done = h.count("Action:")
            return {"thought": "next", "action": plan[min(done, 3)], "diagnosis": "x"}

        def dm_respond(fields, inputs, messages):
            if "analysis" in fields:
                done = inputs["action"] == "pour kettle into cup"
                return {
                    "analysis": "ok",
                    "observation": "Fine.",
                    "parameter_error": False,
                    "place_error": False,
                    "logic_error": False,
                    "task_completed": done,
                }
            return respond(fields, inputs, messages)

        with dspy.context(lm=ScriptedLM(dm_respond)):
            out = InteractiveRefine(max_steps=8, min_refinements=0)(script=tea_script())
        assert out.success and out.verdict.ok
        assert [t.action for t in out.trajectory.player_turns()][-1] == "pour kettle into cup"

    def test_agent_parse_failure_is_recorded(self):
        lm = ScriptedLM(lambda f, i, m: "garbage without fields")
        with dspy.context(lm=lm):
            out = InteractiveRefine(env=ToyEnv, max_steps=3)(seed=0)
        assert out.verdict.stage == "parse" and out.verdict.reasons[0].startswith("parse: act: AdapterParseError")

    def test_dm_mode_needs_a_script(self):
        with dspy.context(lm=ScriptedLM(teacher_respond)), pytest.raises(GraphRunError, match="needs a `script`"):
            InteractiveRefine()()

    def test_bad_env_and_bound(self):
        with pytest.raises(ConfigError, match=r"env must implement refine\.envs\.base\.TextEnv"):
            InteractiveRefine(env=42)
        with pytest.raises(ConfigError, match="max_steps must be >= 1"):
            InteractiveRefine(env=ToyEnv, max_steps=0)


def test_custom_program_example_runs_offline():
    import runpy
    from pathlib import Path

    ns = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "custom_program.py"), run_name="example")
    graph = ns["build_graph"]()
    graph.validate()
    with dspy.context(lm=ns["_fake_lm"]()):
        out = graph.compile()(persona="a tea lover")
    assert [e.node for e in out.graph_trace] == [
        "script",
        "prepare",
        "act",
        "judge",
        "diagnose",
        "refine",
        "judge",
        "check",
    ]
    assert out.action == "take kettle" and out.agrees and out.problems == []


@pytest.mark.slow
def test_embedded_model_acts_without_parse_failures():
    """The real embedded model (SmolLM2-135M under the ChatAdapter grammar) fills PlayerAct: no parse failure."""
    from refine.lm import default_adapter, get_lm

    lm = get_lm("embedded", max_tokens=512)
    with dspy.context(lm=lm, adapter=default_adapter(lm)):
        out = InteractiveRefine(env=ToyEnv, max_steps=1)(seed=0)
    assert out.verdict.stage == "trajectory", out.verdict.reasons
    [turn] = out.trajectory.player_turns()
    assert turn.action and out.trajectory.turns[1].observation
