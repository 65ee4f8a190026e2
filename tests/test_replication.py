"""`examples/replication.py`: the ablation study end to end at a tiny size on CPU, resumed, and its bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from refine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("replication", ROOT / "examples" / "replication.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_flags_are_one_line_config_errors():
    study = _study()
    with pytest.raises(ConfigError, match=r"--unseen takes ENV:TASK items \(e.g. pddl:gripper\), got 'pddl'"):
        study.parse_args(["--unseen", "pddl"])
    with pytest.raises(ConfigError, match="--steps must be >= 1, got 0"):
        study.parse_args(["--steps", "0"])
    assert study.main(["--eval-episodes", "0"]) == 2


@pytest.mark.slow
def test_replication_tiny_end_to_end_and_resume(tmp_path, capsys):
    pytest.importorskip("trl")
    pytest.importorskip("pddlgym")
    pytest.importorskip("minigrid")
    from refine.distill.tiny import save_tiny_model

    student = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "study"
    argv = ["--out", str(out), "--student", f"local/{student}", "--seeds", "0", "--episodes", "1", "--steps", "1",
            "--eval-episodes", "1", "--eval-max-steps", "2", "--train-envs", "pddl", "--heldout-envs", "babyai",
            "--unseen", "pddl:gripper", "--synth-max-steps", "16", "--workers", "2"]  # fmt: skip
    study = _study()
    assert study.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["comparisons"]) == {
        "masked - base", "trained - base", "no-refine - base", "masked - trained", "masked - no-refine",
    }  # fmt: skip
    for cmp in results["comparisons"].values():
        assert set(cmp["groups"]) == {"held_in", "held_out", "unseen"}
        assert cmp["groups"]["unseen"]["envs"] == ["pddl:unseen"]
        for row in cmp["groups"].values():
            assert row["n"] == 1 and row["paired"]
            assert set(row) >= {"success", "progress", "invalid", "format_fail"}
    # The unseen split is PDDL gripper (never trained), the held-in one PDDL blocks.
    unseen = [json.loads(x) for x in (out / "base" / "eval_unseen" / "episodes.jsonl").read_text().splitlines()]
    assert unseen and all(r["env"] == "pddl" and "gripper" in str(r["task"]) for r in unseen)
    assert [r["ablation"] for r in results["runs"]] == ["masked", "trained", "no-refine"]
    md = (out / "results.md").read_text()
    assert "| base | held_in | 1 |" in md and "| masked - no-refine | unseen | 1 |" in md
    # Rerun: every stage is found done, nothing is trained or played again.
    capsys.readouterr()
    assert study.main(argv) == 0
    said = capsys.readouterr().out
    assert "distilling" not in said and "on-policy synthesis" not in said
