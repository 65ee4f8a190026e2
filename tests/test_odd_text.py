"""An LM reply holding a lone surrogate (`\\ud800`, no character, so unencodable) does not poison a run (issue #16
item 6): eval and synth finish, the record is kept with U+FFFD in its place, and later LM requests of the same
episode or item still go out (DSPy refuses to send unencodable text)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import dspy

from refine.data import Trajectory, content_id, storable, storable_text
from refine.envs.base import ToyEnv
from refine.eval import EvalConfig, evaluate
from refine.programs.agent import ChatAgent, ProgramAgent
from refine.store import RunStore
from refine.synth import SynthConfig, run_synth
from refine.testing import ScriptedLM
from tests.fault_server import FaultServer
from tests.test_synth_support import teacher_respond

POISON = "\ud800"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _toy(name, perturbed):
    return ToyEnv()


class TestStorable:
    def test_lone_surrogates_become_replacement_characters_and_other_text_is_untouched(self):
        text = "fine ✓ text"
        assert storable_text(text) is text
        assert storable_text(f"a{POISON}b\udfffc") == "a\ufffdb\ufffdc"
        assert storable({POISON: [f"x{POISON}", (1, POISON)]}) == {"\ufffd": ["x\ufffd", (1, "\ufffd")]}

    def test_content_ids_of_odd_text_do_not_raise(self):
        assert content_id({"t": POISON}) != content_id({"t": "\ufffd"})

    def test_the_data_models_store_lm_text_storably(self):
        from tests.test_synth_support import good_turns, tea_script

        script = tea_script().model_copy(update={"environment": f"kitchen {POISON}"})
        turns = [t.model_dump() for t in good_turns()]
        traj = Trajectory.model_validate({"script": script.model_dump(), "turns": turns})
        assert traj.script.environment == "kitchen \ufffd"
        traj.script.environment = f"assigned {POISON}"  # assignment is validated too
        assert traj.script.environment == "assigned \ufffd"

    def test_the_store_keeps_a_record_with_a_surrogate(self, tmp_path):
        with RunStore(tmp_path / "run", config={}) as store:
            assert store.append("episodes", {"raw": f"Action: {POISON}"}, key="k")
        assert _lines(tmp_path / "run" / "episodes.jsonl")[0]["raw"] == "Action: \ufffd"


def test_eval_against_a_server_sending_a_lone_surrogate_finishes_and_keeps_the_records(tmp_path):
    run = tmp_path / "run"
    cfg = EvalConfig(envs=["toy"], episodes=2, workers=2, max_steps=4)
    with FaultServer(fault_rate=1.0, faults=("surrogate",)) as server:
        # No cache: the two toy episodes send the same prompts, and a greedy agent may reuse a cached answer (a
        # race between the two workers decided how many calls went out: 7 or 8).
        lm = dspy.LM(
            f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key="sk-local", num_retries=0, cache=False
        )
        res = evaluate(ChatAgent(lm, max_turns=None), cfg, run, env_factory=_toy)
        assert server.calls == 8  # every turn of both episodes went out, none refused as unencodable
    assert res.summary["run"]["pending"] == 0
    records = _lines(run / "episodes.jsonl")
    assert len(records) == 2
    steps = [s for r in records for s in r["trajectory"]]
    assert len(steps) == 8 and all(s["action"] == "look" and not s["invalid"] for s in steps)
    assert all(s["thought"] == "odd \ufffd text" for s in steps)


def test_a_program_agent_reply_with_a_surrogate_is_a_usable_action(tmp_path):
    lm = ScriptedLM(lambda fields, inputs, messages: {"thought": f"hm {POISON}", "action": f"look{POISON}"})
    cfg = EvalConfig(envs=["toy"], episodes=1, workers=1, max_steps=3)
    res = evaluate(ProgramAgent(lm), cfg, tmp_path / "run", env_factory=_toy)
    steps = res.records[0]["trajectory"]
    assert len(steps) == 3 and all(s["thought"] == "hm \ufffd" and s["action"] == "look\ufffd" for s in steps)
    assert not any((s.get("reason") or "").startswith("ValueError") for s in steps)  # no refused later request


def test_synth_with_a_surrogate_in_the_teachers_script_keeps_its_items(tmp_path):
    def poisoned(fields, inputs, messages):
        out = copy.deepcopy(teacher_respond(fields, inputs, messages))
        if "script" in out:
            out["script"]["environment"] += f" {POISON} kitchen"
        return out

    totals = run_synth(SynthConfig(n=4, lm="fake/x", workers=1), tmp_path / "run", lm=ScriptedLM(poisoned))
    records = _lines(tmp_path / "run" / "accepted.jsonl") + _lines(tmp_path / "run" / "rejected.jsonl")
    assert totals["records"] == 4 == len(records) and totals["accepted"] >= 1
    assert all("\ufffd kitchen" in r["trajectory"]["script"]["environment"] for r in records)
    assert not any(r.get("error") for r in records)  # no item failed on the text (it used to: ValidationError)
