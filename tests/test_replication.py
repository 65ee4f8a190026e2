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
    with pytest.raises(ConfigError, match="--batch must be >= 1, got 0"):
        study.parse_args(["--batch", "0"])


def test_unseen_levels_of_a_trained_env_leave_its_training_tasks():
    from refine.envs.babyai import DEFAULT_TASKS

    study = _study()
    args = study.parse_args(["--train-envs", "babyai,pddl", "--unseen", "babyai:PutNextLocal,babyai:UnlockLocal"])
    kept = args.env_options["babyai"]["tasks"]
    assert kept == [t for t in DEFAULT_TASKS if t not in ("PutNextLocal", "UnlockLocal")] and len(kept) == 7
    cfg = study._config(args, 1)
    assert cfg.train_options("babyai") == {"tasks": kept}
    # Seeds train on disjoint on-policy episodes (seed + i once gave seeds 0-2 62 of 64 episodes in common).
    from refine.quickstart import env_items

    seeds = [{i["seed"] for i in env_items(study._config(args, s)) if i["env"] == "babyai"} for s in (0, 1, 2)]
    assert all(len(x) == args.episodes for x in seeds) and not (seeds[0] & seeds[1] or seeds[1] & seeds[2])
    assert cfg.train_options("pddl") == {"tasks": ["blocks"]}  # PDDL's training default is untouched
    # An unseen PDDL domain is already out of PDDL's training tasks (blocks); an env not trained on adds nothing.
    args = study.parse_args(["--train-envs", "pddl", "--unseen", "pddl:gripper,babyai:GoToObj"])
    assert args.env_options == {"pddl": {"tasks": ["blocks"]}}
    every = ",".join(f"babyai:{t}" for t in DEFAULT_TASKS)
    with pytest.raises(ConfigError, match="--unseen takes every babyai task"):
        study.parse_args(["--train-envs", "babyai", "--unseen", every])


@pytest.mark.slow
def test_replication_tiny_end_to_end_and_resume(tmp_path, capsys):
    pytest.importorskip("trl")
    pytest.importorskip("pddlgym")
    pytest.importorskip("minigrid")
    from refine.distill.tiny_bases import save_tiny_model

    student = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "study"
    argv = ["--out", str(out), "--student", f"local/{student}", "--seeds", "0", "--episodes", "1", "--steps", "1",
            "--eval-episodes", "1", "--eval-max-steps", "2", "--train-envs", "pddl", "--heldout-envs", "babyai",
            "--unseen", "pddl:gripper", "--synth-max-steps", "16", "--workers", "2"]  # fmt: skip
    study = _study()
    # Split over processes (as on a GPU box): the base model alone, then the students alone, then the whole
    # study, which finds every stage done and only compares.
    assert study.main([*argv, "--part", "base"]) == 0
    assert (out / "base" / "eval_heldout" / "episodes.jsonl").exists() and not (out / "seed0").exists()
    assert study.main([*argv, "--part", "students"]) == 0
    assert (out / "seed0" / "eval_masked" / "eval_unseen").is_dir() and not (out / "results.json").exists()
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "distilling" not in capsys.readouterr().out
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
    assert all(r["distill"]["resumed"] and "rows" in r["distill"] for r in results["runs"])  # kept from the first run
    assert results["base"]["groups"]["held_in"]["n"] == 1  # the base model's own episodes, not one copy per seed
    assert (out / "results.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| base | held_in | 1 |" in md and "| masked - no-refine | unseen | 1 |" in md
    # Rerun: every stage is found done, nothing is trained or played again.
    capsys.readouterr()
    assert study.main(argv) == 0
    said = capsys.readouterr().out
    assert "distilling" not in said and "on-policy synthesis" not in said
