"""Exports (`refine.export`): the shared chat format, loss flags on error turns, provenance, format round-trips."""

from __future__ import annotations

import json

import pytest

from refine.data import Provenance, Trajectory, Verdict
from refine.errors import ExportError
from refine.export import (
    export_run,
    load_export,
    messages_to_sharegpt,
    provenance_of,
    sharegpt_to_messages,
    trajectory_to_messages,
)
from refine.formats import format_assistant, format_first_user, format_system, parse_assistant
from refine.store import RunStore
from tests.test_synth_support import good_turns, tea_script


def _traj(persona="a baker", seed=1):
    t = Trajectory(
        script=tea_script(persona),
        turns=good_turns(),
        provenance=Provenance(
            persona=persona,
            seed=seed,
            models={"teacher": "fake/t"},
            program_hash="abc",
            usage={"fake/t": {"prompt_tokens": 10, "completion_tokens": 5, "calls": 2}},
        ),
    )
    return t.model_copy(update={"verdict": Verdict(ok=True, stage="trajectory", checks=3)})


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    with RunStore(path, config={"n": 3}) as store:
        for i in range(3):
            t = _traj(f"persona {i}", i)
            store.append("accepted", {"id": t.id, "trajectory": t.model_dump(mode="json")}, key=f"k{i}")
        store.append("rejected", {"trajectory": _traj("bad").model_dump(mode="json")}, key="r0")
        store.finish(totals={"accepted": 3, "rejected": 1})
    return path


def test_messages_follow_the_shared_format():
    t = _traj()
    msgs = trajectory_to_messages(t)
    assert msgs[0] == {"role": "system", "content": format_system(t.script.environment, t.script.describe_actions())}
    assert msgs[1] == {"role": "user", "content": format_first_user(t.script.goal, t.script.environment)}
    assert msgs[2] == {
        "role": "assistant",
        "content": format_assistant("I should take kettle.", "take kettle"),
        "loss": True,
    }
    assert msgs[3] == {"role": "user", "content": "Observation: You hold the kettle."}
    assistant = [m for m in msgs if m["role"] == "assistant"]
    assert [parse_assistant(m["content"])[1] for m in assistant] == [t.action for t in t.player_turns()]
    # the turns the DM flags next are masked: fill-at-sink (parameter) and the early pour (logic)
    assert [m["loss"] for m in assistant] == [True, False, True, False, True, True]
    assert msgs[-1]["role"] == "assistant"  # the final DM turn has nothing after it to train


@pytest.mark.parametrize(("fmt", "name"), [("messages", "out.jsonl"), ("sharegpt", "out.json"), ("hf", "hf")])
def test_round_trip(run, tmp_path, fmt, name):
    out = tmp_path / name
    counts = export_run(run, fmt, out)
    assert counts == {"rows": 3, "assistant_turns": 18, "masked_turns": 6, "format": fmt, "out": str(out)}
    rows = load_export(out)
    assert [r["id"] for r in rows] == [_traj(f"persona {i}", i).id for i in range(3)]
    for i, row in enumerate(rows):
        expected = _traj(f"persona {i}", i)
        assert row["messages"] == trajectory_to_messages(expected)
        p = provenance_of(row)
        assert (p.persona, p.seed, p.models, p.usage) == (
            f"persona {i}",
            i,
            {"teacher": "fake/t"},
            {"fake/t": {"prompt_tokens": 10, "completion_tokens": 5, "calls": 2}},
        )
    if fmt == "hf":
        card = (out / "README.md").read_text()
        assert "- rows (accepted trajectories): 3" in card and "- rejected trajectories in the run: 1" in card
        assert "18 (6 masked, 12 trained)" in card and '"n": 3' in card


def test_sharegpt_convention(run, tmp_path):
    export_run(run, "sharegpt", tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    conv = data[0]["conversations"]
    assert [c["from"] for c in conv[:4]] == ["system", "human", "gpt", "human"]
    assert all(c["loss"] is False for c in conv if c["from"] != "gpt")
    assert [c["loss"] for c in conv if c["from"] == "gpt"] == [True, False, True, False, True, True]
    assert sharegpt_to_messages(messages_to_sharegpt(trajectory_to_messages(_traj()))) == trajectory_to_messages(
        _traj()
    )


def test_distillation_reader_accepts_every_format(run, tmp_path):
    data = pytest.importorskip("refine.distill.data")
    for fmt, name in [("messages", "m.jsonl"), ("sharegpt", "s.json"), ("hf", "hf")]:
        export_run(run, fmt, tmp_path / name)
        rows = data.load_rows(tmp_path / name)
        assert [m.get("loss") for m in rows[0]["messages"] if m["role"] == "assistant"] == [
            True,
            False,
            True,
            False,
            True,
            True,
        ], fmt


def test_errors(run, tmp_path):
    with pytest.raises(ExportError, match="Unknown export format 'csv'"):
        export_run(run, "csv", tmp_path / "x")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "f").write_text("x")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_run(run, "hf", tmp_path / "hf")
    empty = tmp_path / "empty"
    RunStore(empty, config={}).close()
    with pytest.raises(ExportError, match="has no accepted trajectory"):
        export_run(empty, "messages", tmp_path / "e.jsonl")
    with pytest.raises(ExportError, match="Unknown ShareGPT speaker 'bot'"):
        sharegpt_to_messages([{"from": "bot", "value": "x"}])
