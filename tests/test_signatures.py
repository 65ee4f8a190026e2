"""Signatures of the AgentRefine roles: fields, LM-facing models (small, flat, grammar-compilable), mappings."""

from __future__ import annotations

import pydantic
import pytest

from refine.data import Script, Turn
from refine.signatures import (
    EnvironmentStep,
    GenerateScript,
    InterpretFeedback,
    PlayerAct,
    PlayTrajectory,
    RefineAction,
    ScriptDraft,
    draft_to_script,
    drafts_to_turns,
    render_script,
)
from tests.test_synth_support import script_draft, tea_script, turn_drafts

ALL = [GenerateScript, PlayTrajectory, PlayerAct, EnvironmentStep, InterpretFeedback, RefineAction]


@pytest.mark.parametrize(
    ("sig", "inputs", "outputs"),
    [
        (GenerateScript, ["persona", "feedback"], ["script"]),
        (PlayTrajectory, ["script_text", "feedback"], ["turns"]),
        (PlayerAct, ["environment", "goal", "actions", "history"], ["thought", "action"]),
        (
            EnvironmentStep,
            ["script_text", "history", "action"],
            ["analysis", "observation", "parameter_error", "place_error", "logic_error", "task_completed"],
        ),
        (InterpretFeedback, ["goal", "actions", "history", "action", "observation"], ["diagnosis"]),
        (RefineAction, ["environment", "goal", "actions", "history", "diagnosis"], ["thought", "action"]),
    ],
)
def test_fields(sig, inputs, outputs):
    assert list(sig.input_fields) == inputs
    assert list(sig.output_fields) == outputs
    assert len(sig.instructions) > 150  # the instructions are what optimizers tune: they must say the rules


def test_lm_facing_schemas_are_closed_and_flat_and_compile_to_a_grammar():
    llguidance = pytest.importorskip("llguidance")
    from refine.lm import lark_for_signature

    for sig in ALL:
        grammar = lark_for_signature(sig)
        assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(grammar)) == ""
    schema = ScriptDraft.model_json_schema()
    # no free-form dicts (additionalProperties schemas) that a small model must fill under a grammar
    assert "additionalProperties" not in str(schema)
    assert set(schema["$defs"]) == {"ActionDraft", "ParameterDraft"}


def test_draft_to_script_round_trip():
    script = tea_script("a baker")
    draft = ScriptDraft.model_validate(script_draft(script))
    assert draft_to_script(draft, persona="a baker") == script
    assert draft_to_script(script_draft(script), persona="a baker") == script
    assert draft_to_script(script, persona="x") is script
    with pytest.raises(pydantic.ValidationError):
        draft_to_script({"environment": "e"})


def test_drafts_to_turns_keeps_flags_on_dm_turns_only():
    drafts = turn_drafts(
        [
            Turn(role="player", thought="t", action="go"),
            Turn(role="dm", observation="no", parameter_error=True),
        ]
    )
    drafts[0]["parameter_error"] = True  # a flag on a player turn is meaningless and dropped
    turns = drafts_to_turns(drafts)
    assert turns[0] == Turn(role="player", thought="t", action="go")
    assert turns[1].parameter_error and turns[1].observation == "no"
    assert drafts_to_turns([{**drafts[0], "action": "  "}])[0].action is None


def test_render_script_shows_patterns_only_when_asked():
    s: Script = tea_script()
    text = render_script(s)
    assert "pattern: ^fill (?P<obj>\\w+) at (?P<source>\\w+)$" in text
    assert "allowed values: obj in ['kettle']; source in ['tap']" in text
    assert "pattern:" not in render_script(s, patterns=False)
    assert text.startswith("Environment: A small kitchen")
