"""Training rows: loading from run directories and exported datasets, and the paper's ablations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine.data import ActionSpec, Provenance, Script, Trajectory, Turn
from refine.distill.training_rows import apply_ablation, load_rows, normalize_row
from refine.errors import TrainingError

MSGS = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "obs 1"},
    {"role": "assistant", "content": "Thought: a\nAction: bad", "loss": False},
    {"role": "user", "content": "Observation: error"},
    {"role": "assistant", "content": "Thought: b\nAction: bad again", "loss": False},
    {"role": "user", "content": "Observation: error 2"},
    {"role": "assistant", "content": "Thought: c\nAction: good"},
    {"role": "user", "content": "Observation: ok"},
    {"role": "assistant", "content": "Thought: d\nAction: finish"},
]


def traj(i=0):
    script = Script(
        environment="A kitchen with a table.",
        tasks=["take the key"],
        actions=[ActionSpec(name="take", pattern=r"^take (?P<o>\w+)$", parameters={"o": ["key"]})],
    )
    turns = [
        Turn(role="player", thought="try", action="take spoon"),
        Turn(role="dm", observation="No spoon here.", parameter_error=True),
        Turn(role="player", thought="the key", action="take key"),
        Turn(role="dm", observation="You take the key.", task_completed=True),
    ]
    return Trajectory(script=script, turns=turns, provenance=Provenance(persona=f"p{i}", models={"teacher": "t"}))


class TestAblations:
    def test_masked_is_identity(self):
        assert apply_ablation([{"id": "x", "messages": MSGS}], "masked")[0]["messages"] == MSGS

    def test_trained_trains_every_assistant_turn(self):
        (row,) = apply_ablation([{"id": "x", "messages": MSGS}], "trained")
        assert [m.get("loss") for m in row["messages"] if m["role"] == "assistant"] == [True] * 4
        assert MSGS[2]["loss"] is False  # input untouched

    def test_no_refine_drops_error_turns_and_their_feedback(self):
        (row,) = apply_ablation([{"id": "x", "messages": MSGS}], "no-refine")
        assert [m["content"] for m in row["messages"]] == [
            "sys",
            "obs 1",
            "Thought: c\nAction: good",
            "Observation: ok",
            "Thought: d\nAction: finish",
        ]

    def test_unknown(self):
        with pytest.raises(TrainingError, match="unknown ablation 'x'"):
            apply_ablation([{"id": "x", "messages": MSGS}], "x")


def _explicit(msgs):
    """Rows read back carry an explicit bool `loss` on every assistant turn (absent means trained)."""
    return [{**m, "loss": m.get("loss", True)} if m["role"] == "assistant" else m for m in msgs]


FIXTURES = Path(__file__).parent / "fixtures" / "published"


class TestLoadRows:
    def test_messages_jsonl(self, tmp_path):
        p = tmp_path / "d.jsonl"
        p.write_text(json.dumps({"id": "a", "messages": MSGS, "provenance": {"persona": "p"}}) + "\n\n")
        (row,) = load_rows(p)
        assert row["id"] == "a" and row["messages"] == _explicit(MSGS) and row["provenance"] == {"persona": "p"}

    def test_sharegpt_json_maps_speakers_and_loss(self, tmp_path):
        p = tmp_path / "d.json"
        conv = [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "obs"},
            {"from": "gpt", "value": "Action: x", "loss": False},
            {"from": "human", "value": "err"},
            {"from": "gpt", "value": "Action: y"},
        ]
        p.write_text(json.dumps([{"conversations": conv}]))
        (row,) = load_rows(p)
        assert [(m["role"], m.get("loss")) for m in row["messages"]] == [
            ("system", None),
            ("user", None),
            ("assistant", False),
            ("user", None),
            ("assistant", True),
        ]
        assert len(row["id"]) == 16  # content id when the row has none

    def test_datasets_folder(self, tmp_path):
        datasets = pytest.importorskip("datasets")
        rows = [{"id": "a", "messages": MSGS[:3]}, {"id": "b", "messages": MSGS[:3]}]
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
        loaded = load_rows(tmp_path / "ds")
        assert [r["id"] for r in loaded] == ["a", "b"]
        assert loaded[0]["messages"][2] == {"role": "assistant", "content": MSGS[2]["content"], "loss": False}
        # user turns never carry a loss key, even where the columnar format filled one in with None
        assert "loss" not in loaded[0]["messages"][1]

    def test_run_directory_uses_accepted_trajectories(self, tmp_path):
        from refine.data import RunRecord
        from refine.store import RunStore

        store = RunStore(tmp_path / "run", {"what": "test"})
        for i in range(2):
            rec = RunRecord(key=f"k{i}", accepted=True, trajectory=traj(i).mark_losses())
            store.append("accepted", rec.to_json(), key=f"k{i}")
        store.append("rejected", RunRecord(key="rej", accepted=False, trajectory=traj(9)).to_json(), key="rej")
        store.close()
        rows = load_rows(tmp_path / "run")
        assert len(rows) == 2
        assistant = [m for m in rows[0]["messages"] if m["role"] == "assistant"]
        assert [m["loss"] for m in assistant] == [False, True]
        assert assistant[1]["content"] == "Thought: the key\nAction: take key"
        assert rows[0]["provenance"]["models"] == {"teacher": "t"}

    def test_stored_loss_flag_is_the_truth(self, tmp_path):
        # the flag the program stored wins: nothing re-derives masks from the DM's error flags at read time
        t = traj()  # no mark_losses(): both player turns stored as trained although the DM flags the first
        (row,) = load_rows([t.model_dump(mode="json")])
        assert [m["loss"] for m in row["messages"] if m["role"] == "assistant"] == [True, True]

    def test_a_record_without_its_typed_fields_is_refused(self, tmp_path):
        from refine.store import RunStore

        store = RunStore(tmp_path / "run", {"what": "test"})
        store.append("accepted", traj().model_dump(mode="json"), key="k0")  # a bare trajectory, not a run record
        store.close()
        with pytest.raises(TrainingError, match=r"accepted.jsonl record 0 \(key 'k0'\) is not a run record"):
            load_rows(tmp_path / "run")

    def test_iterable_of_trajectory_dicts(self):
        (row,) = load_rows([traj().model_dump(mode="json")])
        assert row["messages"][0]["role"] == "system"

    @pytest.mark.parametrize(
        ("name", "content", "match"),
        [
            (
                "x.jsonl",
                '{"messages": [{"role": "user", "content": "a"}]}\nnot json\n',
                r"x\.jsonl:2 is not valid JSON",
            ),
            ("x.jsonl", '{"text": "hi"}\n', r"unknown row schema \(keys: text\)"),
            ("x.json", "3", "expected a JSON list of rows"),
            ("x.json", '[{"conversations": [{"from": "bot", "value": "x"}]}]', "unknown ShareGPT speaker 'bot'"),
            ("x.txt", "hello", "unknown data format"),
            ("x.jsonl", "", r"x\.jsonl is empty \(0 bytes\)"),
        ],
    )
    def test_errors_name_the_file(self, tmp_path, name, content, match):
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(TrainingError, match=match):
            load_rows(p)

    def test_missing_and_empty(self, tmp_path):
        with pytest.raises(TrainingError, match="does not exist"):
            load_rows(tmp_path / "nope")
        (tmp_path / "e.jsonl").write_text("\n")
        with pytest.raises(TrainingError, match="holds no training rows"):
            load_rows(tmp_path / "e.jsonl")
        (tmp_path / "empty_dir").mkdir()
        with pytest.raises(TrainingError, match="neither a run directory"):
            load_rows(tmp_path / "empty_dir")

    def test_bad_message(self):
        with pytest.raises(TrainingError, match="row 3: every message needs 'role' and 'content'"):
            normalize_row({"messages": [{"role": "user"}]}, "row 3")


class TestPublishedSchemas:
    """The published sets, in their exact schemas (offline fixtures): detected, and their loss flags kept as masks."""

    @pytest.mark.parametrize(
        ("name", "schema", "ids", "losses"),
        [
            ("agentrefine.json", "agentrefine", ["agentrefine_0", "agentrefine_1"], [False, True, True]),
            ("agentgym.json", "agentgym", ["webshop_0"], [False, True, True]),  # the instruction's "Ok." stays masked
            ("agentinstruct.json", "agentinstruct", ["os_0"], [True, True]),
            ("agentflan.jsonl", "agentflan", ["agentflan_alfworld_0"], [False, True]),
        ],
    )
    def test_detected_with_masks(self, name, schema, ids, losses):
        from refine.codec import load_source

        rows, detected = load_source(FIXTURES / name)
        assert detected == schema
        assert [r["id"] for r in rows] == ids
        assert [m["loss"] for m in rows[0]["messages"] if m["role"] == "assistant"] == losses
        assert {m["role"] for r in rows for m in r["messages"]} <= {"system", "user", "assistant"}
        assert all("loss" not in m for r in rows for m in r["messages"] if m["role"] != "assistant")
        assert load_rows(FIXTURES / name) == rows

    def test_a_folder_of_published_files(self):
        rows = load_rows(FIXTURES)
        assert len(rows) == 5

    def test_hub_id_offline_is_one_line(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(TrainingError, match=r"^hf:fudayuan/AgentRefine-deepseek-4000 needs the Hugging Face Hub"):
            load_rows("hf:fudayuan/AgentRefine-deepseek-4000")
        with pytest.raises(TrainingError, match="is not a hub dataset id"):
            load_rows("hf:nope")

    def test_hub_id_goes_through_datasets(self, monkeypatch):
        import sys
        import types

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        calls = []
        fixture = json.loads((FIXTURES / "agentrefine.json").read_text())

        def load_dataset(name, split):
            calls.append((name, split))
            return fixture

        monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
        rows = load_rows("hf:fudayuan/AgentRefine-deepseek-4000")
        assert calls == [("fudayuan/AgentRefine-deepseek-4000", "train")]
        assert [r["id"] for r in rows] == ["agentrefine_0", "agentrefine_1"]
