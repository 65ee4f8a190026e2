"""Exports (`refine.export`): every format keeps the mask where its trainer looks, atomically, never inside a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refine.codec import (
    TRL_TEMPLATES,
    load_source,
    messages_to_sharegpt,
    sharegpt_to_messages,
    trajectory_to_messages,
    trajectory_to_row,
)
from refine.data import Provenance, RunRecord, Trajectory, Verdict
from refine.errors import ExportError
from refine.export import FORMATS, MASK_NOTES, export_rows, export_run, load_export, provenance_of
from refine.formats import format_assistant, format_first_user, format_system, parse_assistant
from refine.store import RunStore
from tests.test_synth_support import good_turns, tea_script

FIXTURES = Path(__file__).parent / "fixtures" / "published"
NAMES = {"messages": "out.jsonl", "sharegpt": "out.json", "agentgym": "gym.json", "trl": "trl", "llamafactory": "lf"}
NAMES |= {"agentrefine": "ar.json", "hf": "hf"}
LOSSES = [True, False, True, False, True, True]  # fill-at-sink (parameter) and the early pour (logic) are masked


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
    ).mark_losses()  # what the programs store
    return t.model_copy(update={"verdict": Verdict(ok=True, stage="trajectory", checks=3)})


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    with RunStore(path, config={"n": 3}) as store:
        for i in range(3):
            rec = RunRecord(key=f"k{i}", accepted=True, trajectory=_traj(f"persona {i}", i))
            store.append("accepted", rec.to_json(), key=f"k{i}")
        bad = _traj("bad").model_copy(update={"verdict": Verdict(ok=False, reasons=["x"], checks=1)})
        store.append("rejected", RunRecord(key="r0", accepted=False, trajectory=bad).to_json(), key="r0")
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
    assert [m["loss"] for m in assistant] == LOSSES
    assert msgs[-1]["role"] == "assistant"  # the final DM turn has nothing after it to train


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(run, tmp_path, fmt):
    out = tmp_path / NAMES[fmt]
    counts = export_run(run, fmt, out)
    assert counts == {
        "rows": 3,
        "assistant_turns": 18,
        "masked_turns": 6,
        "format": fmt,
        "out": str(out),
        "schema": "record",
    }
    rows = load_export(out)
    assert [r["id"] for r in rows] == [_traj(f"persona {i}", i).id for i in range(3)]
    for i, row in enumerate(rows):
        expected = trajectory_to_row(_traj(f"persona {i}", i))
        assert [m.get("loss") for m in row["messages"] if m["role"] == "assistant"] == LOSSES, fmt
        if fmt in ("agentgym", "agentrefine"):  # the system text is folded into the first human turn
            assert (
                row["messages"][0]["content"]
                == expected["messages"][0]["content"] + "\n\n" + (expected["messages"][1]["content"])
            )
            assert row["messages"][1:] == expected["messages"][2:]
            continue
        assert row["messages"] == expected["messages"], fmt
        if fmt == "llamafactory":
            continue  # the v1 native rows hold only id + messages
        assert row["verdict_reasons"] == []
        p = provenance_of(row)
        assert (p.persona, p.seed, p.models, p.usage) == (
            f"persona {i}",
            i,
            {"teacher": "fake/t"},
            {"fake/t": {"prompt_tokens": 10, "completion_tokens": 5, "calls": 2}},
        )


def test_hf_and_jsonl_have_the_same_columns_and_hf_loads_both_ways(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    export_run(run, "messages", tmp_path / "m.jsonl")
    export_run(run, "hf", tmp_path / "hf")
    jsonl = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert sorted(ds.column_names) == sorted(jsonl) == ["id", "messages", "provenance", "verdict_reasons"]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "- rows (accepted trajectories): 3" in card and "- rejected trajectories in the run: 1" in card
    assert "18 (6 masked, 12 trained)" in card and '"n": 3' in card
    # LLaMA-Factory: the registered data is one file of one type, the card beside it, not among the data files
    entry = json.loads((tmp_path / "hf" / "llamafactory_dataset_info.json").read_text())["agentrefine_hf"]
    data = Path(entry["file_name"])
    assert data.suffix == ".arrow" and data.parent == (tmp_path / "hf").resolve() and data.is_file()
    lf = datasets.load_dataset("arrow", data_files=str(data), split="train")  # what LLaMA-Factory calls
    assert lf["id"] == ds["id"] and entry["tags"]["role_tag"] == "role"


def test_sharegpt_convention(run, tmp_path):
    export_run(run, "sharegpt", tmp_path / "s.json")
    conv = json.loads((tmp_path / "s.json").read_text())[0]["conversations"]
    assert [c["from"] for c in conv[:4]] == ["system", "human", "gpt", "human"]
    assert all(c["loss"] is False for c in conv if c["from"] != "gpt")
    assert [c["loss"] for c in conv if c["from"] == "gpt"] == LOSSES
    msgs = trajectory_to_messages(_traj())
    assert sharegpt_to_messages(messages_to_sharegpt(msgs)) == msgs


def test_agentgym_layout(run, tmp_path):
    export_run(run, "agentgym", tmp_path / "g.json")
    row = json.loads((tmp_path / "g.json").read_text())[0]
    assert set(row) == {"item_id", "conversations"}
    conv = row["conversations"]
    assert [c["from"] for c in conv[:3]] == ["human", "gpt", "human"]  # no system turn: folded into the first human
    assert conv[0]["value"].startswith("You are an agent") and "Task:" in conv[0]["value"]
    assert all(c["loss"] is None for c in conv if c["from"] == "human")
    assert [c["loss"] for c in conv if c["from"] == "gpt"] == LOSSES
    assert set(conv[0]) == {"from", "loss", "value"}


def test_agentrefine_schema_reads_back_as_agentrefine(run, tmp_path):
    export_run(run, "agentrefine", tmp_path / "ar.json")
    row = json.loads((tmp_path / "ar.json").read_text())[0]
    assert set(row) == {"id", "conversations"} and row["conversations"][0]["from"] == "human"
    assert load_source(tmp_path / "ar.json")[1] == "agentrefine"


def test_llamafactory_v1_layout(run, tmp_path):
    export_run(run, "llamafactory", tmp_path / "lf")
    row = json.loads((tmp_path / "lf" / "train.jsonl").read_text().splitlines()[0])
    weights = [(m["role"], m["loss_weight"]) for m in row["messages"]]
    assert weights[:3] == [("system", 0.0), ("user", 0.0), ("assistant", 1.0)]
    assert [w for r, w in weights if r == "assistant"] == [1.0 if x else 0.0 for x in LOSSES]
    assert row["messages"][2]["content"] == [
        {"type": "text", "value": "Thought: I should take kettle.\nAction: take kettle"}
    ]
    info = (tmp_path / "lf" / "dataset_info.yaml").read_text()
    assert info.startswith("agentrefine:\n") and "source: local" in info
    assert json.loads(info.split("path: ")[1].splitlines()[0]) == str((tmp_path / "lf" / "train.jsonl").resolve())


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_trl_template_marks_exactly_the_trained_turns(run, tmp_path, style):
    from refine.distill.labels import IGNORE_INDEX, build_labels
    from refine.distill.tiny_bases import make_tiny_tokenizer

    export_run(run, "trl", tmp_path / "trl", template=style)
    template = (tmp_path / "trl" / "chat_template.jinja").read_text()
    assert template == TRL_TEMPLATES[style] and "{% generation %}" in template
    tok = make_tiny_tokenizer(style)
    row = json.loads((tmp_path / "trl" / "train.jsonl").read_text().splitlines()[0])
    assert [m.get("loss") for m in row["messages"] if m["role"] == "assistant"] == LOSSES
    # what TRL computes for assistant_only_loss (transformers' generation mask) == what build_labels trains
    enc = tok.apply_chat_template(
        row["messages"], chat_template=template, return_assistant_tokens_mask=True, return_dict=True
    )
    ours = build_labels(tok, row["messages"])
    assert enc["input_ids"] == ours["input_ids"]
    assert [bool(m) for m in enc["assistant_masks"]] == [lab != IGNORE_INDEX for lab in ours["labels"]]
    assert sum(enc["assistant_masks"]) > 0


def test_export_inside_a_run_is_refused_and_the_run_is_intact(run, tmp_path):
    before = (run / "accepted.jsonl").read_bytes()
    with pytest.raises(ExportError, match=r"--out .*accepted.jsonl is inside the run directory .*run; write exports"):
        export_run(run, "messages", run / "accepted.jsonl")
    with pytest.raises(ExportError, match="is inside the run directory"):
        export_run(run, "hf", run / "sub" / "hf")
    assert (run / "accepted.jsonl").read_bytes() == before
    res = CliRunner().invoke(_app(), ["export", str(run), "--out", str(run / "accepted.jsonl")])
    assert res.exit_code == 1 and isinstance(res.exception, ExportError)


def _app():
    from refine.cli.app import app

    return app


def test_a_failed_export_keeps_the_previous_one(run, tmp_path, monkeypatch):
    import refine.export as ex

    out = tmp_path / "m.jsonl"
    export_run(run, "messages", out)
    good = out.read_bytes()

    def boom(rows):
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(ex, "_jsonl", boom)
    with pytest.raises(KeyboardInterrupt):
        export_run(run, "messages", out)
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.jsonl")] == []


def test_a_killed_hf_export_does_not_block_a_rerun(run, tmp_path):
    pytest.importorskip("datasets")
    stale = tmp_path / ".hf.tmp-abc123"  # what a kill -9 during the hf export leaves behind
    stale.mkdir()
    (stale / "data-00000-of-00001.arrow").write_bytes(b"half")
    export_run(run, "hf", tmp_path / "hf")
    assert not stale.exists()
    assert len(load_export(tmp_path / "hf")) == 3
    export_run(run, "hf", tmp_path / "hf")  # re-export over an earlier export replaces it
    assert len(load_export(tmp_path / "hf")) == 3


def test_zero_byte_export_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(ExportError, match=r"e\.jsonl is empty \(0 bytes\)"):
        load_export(tmp_path / "e.jsonl")


def test_errors(run, tmp_path):
    with pytest.raises(ExportError, match="Unknown export format 'csv'"):
        export_run(run, "csv", tmp_path / "x")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "f").write_text("x")
    with pytest.raises(ExportError, match="exists and is not an earlier export"):
        export_run(run, "hf", tmp_path / "hf")
    assert (tmp_path / "hf" / "f").read_text() == "x"
    empty = tmp_path / "empty"
    RunStore(empty, config={}).close()
    with pytest.raises(ExportError, match="has no accepted trajectory"):
        export_run(empty, "messages", tmp_path / "e.jsonl")
    with pytest.raises(ExportError, match="unknown ShareGPT speaker 'bot'"):
        sharegpt_to_messages([{"from": "bot", "value": "x"}])
    with pytest.raises(ExportError, match="--template 'nope' is not one of"):
        export_run(run, "trl", tmp_path / "t", template="nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ExportError, match="is a file; --format trl writes a folder"):
        export_rows(load_source(run)[0], "trl", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_text() == "x"


@pytest.mark.parametrize("name", ["agentrefine.json", "agentgym.json", "agentinstruct.json", "agentflan.jsonl"])
def test_published_sets_export_with_their_masks(tmp_path, name):
    rows, _ = load_source(FIXTURES / name)
    export_run(FIXTURES / name, "sharegpt", tmp_path / "s.json")
    again = load_export(tmp_path / "s.json")
    assert [r["messages"] for r in again] == [r["messages"] for r in rows]


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_says_what_is_masked_and_which_setting_keeps_it(run, tmp_path, fmt):
    out = tmp_path / NAMES[fmt]
    res = CliRunner().invoke(_app(), ["export", str(run), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"Exported 3 trajectories (18 assistant turns, 6 masked) from record data as {fmt}" in res.output
    assert "Mask: " + MASK_NOTES[fmt].replace("OUT", str(out))[:60] in " ".join(res.output.split())


def test_llamafactory_v1_loader_reads_the_export(run, tmp_path):
    """LLaMA-Factory v1's local loader is `datasets.load_dataset("json", data_files=path)`: the per-message weights
    survive it; with llamafactory installed, its own v1 ChatML renderer trains exactly the loss turns."""
    datasets = pytest.importorskip("datasets")
    export_run(run, "llamafactory", tmp_path / "lf")
    path = json.loads((tmp_path / "lf" / "dataset_info.yaml").read_text().split("path: ")[1].splitlines()[0])
    ds = datasets.load_dataset("json", data_files=path, split="train")
    weights = [m["loss_weight"] for m in ds[0]["messages"] if m["role"] == "assistant"]
    assert weights == [1.0 if x else 0.0 for x in LOSSES]
    try:
        from llamafactory.v1.core.utils.rendering import render_chatml_messages
    except ImportError:
        return
    from refine.distill.tiny_bases import make_tiny_tokenizer

    tok = make_tiny_tokenizer("chatml")
    out = render_chatml_messages(tok, ds[0]["messages"])
    trained = tok.decode([t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != -100])
    want = [m["content"][0]["value"] for m in ds[0]["messages"] if m["loss_weight"] > 0]
    assert all(w in trained for w in want) and "fill kettle at sink" not in trained
