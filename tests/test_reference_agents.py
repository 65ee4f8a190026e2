"""Reference agents (`--agent expert` / `--agent random`) and the validation `refine eval` does before playing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from refine.cli.app import app
from refine.envs import check_env
from refine.envs.base import ToyEnv
from refine.envs.perturb import PerturbedEnv
from refine.errors import ConfigError, EnvError
from refine.eval import EvalConfig, evaluate, run_episode
from refine.eval.reference_agents import ExpertAgent, RandomAgent, reference_agent


def toy(name, perturbed):
    return PerturbedEnv(ToyEnv()) if perturbed else ToyEnv()


class TestExpertAndRandom:
    def test_expert_is_the_upper_bound_also_with_reworded_actions(self):
        res = evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=3, perturb=True), env_factory=toy)
        for variant in ("base", "perturbed"):
            m = res.summary["envs"]["toy"][variant]
            assert m["success_rate"] == 1.0 and m["progress_rate"] == 1.0 and m["mean_steps"] == 3.0
            assert m["invalid_rate"] == 0.0 and m["prompt_tokens"] == 0
        by_variant = {r["variant"]: [s["action"] for s in r["trajectory"]] for r in res.records}
        assert by_variant == {
            "base": ["take key", "open door", "go door"],
            "perturbed": ["grab key", "unlatch door", "walk through door"],
        }

    def test_random_draws_valid_actions_reproducibly(self):
        a = run_episode(RandomAgent(), ToyEnv(), {"env": "toy", "seed": 3}, max_steps=12)
        b = run_episode(RandomAgent(), ToyEnv(), {"env": "toy", "seed": 3}, max_steps=12)
        acts = [s["action"] for s in a["trajectory"]]
        assert acts == [s["action"] for s in b["trajectory"]] and set(acts) <= set(ToyEnv().actions)
        assert len(set(acts)) > 1  # not one action over and over

    def test_expert_without_solver_is_a_recorded_failure(self):
        class NoExpert(ToyEnv):
            expert_action = None

        rec = run_episode(ExpertAgent(), NoExpert(), {"env": "toy"}, max_steps=3)
        assert rec["error"].startswith("agent failed to start: ConfigError") and "has no expert" in rec["error"]

    def test_unknown_reference_agent(self):
        with pytest.raises(ConfigError, match="Unknown reference agent 'oracle'; use one of: expert, random"):
            reference_agent("oracle")


class TestValidation:
    def test_unknown_env_and_options_fail_before_playing(self):
        played = []
        with pytest.raises(ConfigError, match=r"Unknown environment 'alfworld' in the refine suite"):
            evaluate(ExpertAgent(), EvalConfig(envs=["toy", "alfworld"]), on_episode=played.append)
        with pytest.raises(
            ConfigError, match=r"Unknown option\(s\) colour for environment 'toy'; it accepts: max_steps"
        ):
            evaluate(ExpertAgent(), EvalConfig(envs=["toy"], env_options={"toy": {"colour": 1}}))
        with pytest.raises(ConfigError, match=r"Options given for environments that are not evaluated: \['pddl'\]"):
            evaluate(ExpertAgent(), EvalConfig(envs=["toy"], env_options={"pddl": {"split": "train"}}))
        with pytest.raises(ConfigError, match="AgentBoard has no TextWorld; use --suite refine"):
            evaluate(ExpertAgent(), EvalConfig(envs=["textworld"], suite="agentboard"))
        assert played == []

    def test_env_option_values(self):
        with pytest.raises(EnvError, match="TextWorld split must be 'train', 'dev' or 'test', not 'val'"):
            check_env("textworld", options={"split": "val"})
        with pytest.raises(EnvError, match="Unknown ScienceWorld task 'boil-water'"):
            check_env("scienceworld", options={"tasks": ["boil-water"]})
        with pytest.raises(EnvError, match="Unknown PDDL domain 'sokoban-ultra'"):
            check_env("pddl", options={"tasks": ["sokoban-ultra"]})
        with pytest.raises(EnvError, match=r"Bad PDDL domain name '\.\./x'"):
            check_env("pddl", options={"tasks": ["../x"]})
        check_env("pddl", options={"tasks": ["blocks", "gripper"], "split": "train"})

    def test_textworld_checks_the_task_before_building_a_path(self, tmp_path, monkeypatch):
        """Regression (#16, item 10): a `task` option went into a cache path before it was checked."""
        from refine.envs.textworld import check_task, make_game_file

        monkeypatch.setenv("REFINE_CACHE", str(tmp_path / "cache"))
        for bad in ("../../escape", "simple/../../x", 3):
            with pytest.raises(EnvError, match="Unknown TextWorld task"):
                make_game_file(bad, 0)
            with pytest.raises(EnvError, match="Unknown TextWorld task"):
                check_env("textworld", options={"tasks": [bad]})
        assert not (tmp_path / "cache").exists() and not (tmp_path / "escape").exists()
        assert check_task("cooking") == "cooking"


class TestCLI:
    def test_expert_and_random_runs_carry_their_settings(self, tmp_path):
        runner = CliRunner()
        for agent in ("expert", "random"):
            out = tmp_path / agent
            res = runner.invoke(app, ["eval", "--agent", agent, "--envs", "toy", "-n", "3", "--out", str(out), "-q"])
            assert res.exit_code == 0, res.output
            summary = json.loads((out / "summary.json").read_text())
            assert summary["suite"] == "refine" and summary["settings"]["agent"] == agent
            assert summary["settings"]["decoding"] == {} and summary["run"]["model"] == agent
        assert json.loads((tmp_path / "expert" / "summary.json").read_text())["overall"]["base"]["success_rate"] == 1
        rep = runner.invoke(
            app, ["report", str(tmp_path / "random"), str(tmp_path / "expert"), "-o", str(tmp_path / "r")]
        )
        assert rep.exit_code == 0, rep.output
        page = (tmp_path / "r" / "report.html").read_text()
        assert '<table id="bounds-table">' in page and "<td>expert</td>" in page and "<td>random</td>" in page

    def test_bad_env_is_one_line_before_any_lm(self, tmp_path):
        res = CliRunner().invoke(app, ["eval", "--agent", "no-such-model", "--envs", "toy,jericho", "-q"])
        assert res.exit_code != 0 and isinstance(res.exception, ConfigError)  # main() prints it as one red line
        assert str(res.exception).startswith("Unknown environment 'jericho' in the refine suite. Available: babyai")
