"""Environment adapters: registry errors, each real env solved by its known solution, invalid actions counted."""

from __future__ import annotations

import importlib.util
import os

import pytest

from refine.envs import ENVIRONMENTS, PerturbedEnv, TextEnv, ToyEnv, make_env
from refine.envs._common import normalize_action, require
from refine.errors import EnvError

needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(mod) is None, reason=f"{mod} not installed (envs extra)")
    for name, mod in {
        "babyai": "minigrid",
        "scienceworld": "scienceworld",
        "pddl": "pddlgym",
        "textworld": "textworld",
    }.items()
}


def play(env, actions):
    steps = [env.step(a) for a in actions]
    return steps


class TestRegistry:
    def test_names(self):
        assert set(ENVIRONMENTS) == {"babyai", "scienceworld", "pddl", "textworld", "toy"}

    def test_unknown_env_names_the_choices(self):
        with pytest.raises(
            EnvError, match=r"Unknown environment 'alfworld' in the refine suite\. Available: babyai, scienceworld"
        ):
            make_env("alfworld")

    def test_bad_option(self):
        with pytest.raises(EnvError, match="Bad options for environment 'toy'"):
            make_env("toy", colour="red")

    def test_toy_and_perturbed(self):
        assert isinstance(make_env("toy"), ToyEnv)
        env = make_env("toy", perturb=True, max_steps=5)
        assert isinstance(env, PerturbedEnv) and isinstance(env, TextEnv)
        assert env.max_steps == 5

    def test_missing_extra_says_how_to_install(self):
        with pytest.raises(EnvError, match=r"needs the package 'no_such_pkg_xyz'.*pip install 'dspy-refine\[envs\]'"):
            require("no_such_pkg_xyz.sub", "demo")

    def test_normalize(self):
        assert normalize_action('  "Move   Forward." ') == "move forward"


class TestPerturbation:
    def test_toy_solved_only_with_reworded_actions(self):
        env = PerturbedEnv(ToyEnv())
        first = env.reset()
        assert "grab key" in first.available_actions and "take key" not in first.available_actions
        refused = env.step("take key")
        assert refused.invalid and "Use the actions exactly as they are described" in refused.observation
        steps = play(env, ["grab key", "unlatch door", "walk through door"])
        assert [s.invalid for s in steps] == [False, False, False]
        assert steps[-1].success and steps[-1].done and steps[-1].progress == 1.0

    def test_reordered_arguments_round_trip(self):
        from refine.envs.perturb import rewordings_for

        rules = rewordings_for("textworld")
        env = PerturbedEnv(ToyEnv())
        env.rules = rules
        assert env.perturb_action("take red apple from fridge") == "from fridge get red apple"
        assert env.perturb_action("take red apple") == "get red apple"
        assert env.perturb_action("unlock door with key") == "with key unlock door"
        assert env._to_canonical("From fridge get red apple") == ("take red apple from fridge", False)
        assert env._to_canonical("take red apple from fridge") == (None, True)
        assert env._to_canonical("xyzzy") == ("xyzzy", False)  # not reworded: the env answers for itself

    def test_step_bound_counts_refused_actions(self):
        env = PerturbedEnv(ToyEnv(max_steps=2))
        env.reset()
        assert not env.step("take key").done
        assert env.step("take key").done


@needs["babyai"]
class TestBabyAI:
    def test_expert_plan_solves_with_progress(self):
        env = make_env("babyai")
        first = env.reset("UnlockLocal", seed=1)
        assert first.instruction.startswith("Open the ") and first.instruction.endswith(" door.")
        assert first.info["subgoals"] >= 3 and "You see" in first.observation
        assert first.available_actions == ["turn left", "turn right", "move forward", "pick up", "drop", "toggle"]
        steps = play(env, env.expert_plan)
        assert not any(s.invalid for s in steps)
        assert steps[-1].success and steps[-1].done and steps[-1].progress == 1.0
        progress = [s.progress for s in steps]
        assert progress == sorted(progress) and any(0 < p < 1 for p in progress[:-1])  # subgoals before success

    def test_invalid_actions(self):
        env = make_env("babyai")
        env.reset("GoToLocal", seed=1)
        bad = env.step("jump")
        assert bad.invalid and "'jump' is not a valid action" in bad.observation
        drop = env.step("drop")
        assert drop.invalid and "not carrying anything" in drop.observation
        assert not env.step("turn left").invalid

    def test_splits_use_disjoint_seed_ranges(self):
        train, test = make_env("babyai", split="train"), make_env("babyai")
        a, b = train.reset("GoToLocal", seed=1), test.reset("GoToLocal", seed=1)
        assert b.info["split"] == "test" and (a.instruction, a.observation) != (b.instruction, b.observation)
        with pytest.raises(EnvError, match="BabyAI split must be 'train', 'dev' or 'test', not 'val'"):
            make_env("babyai", split="val")

    def test_unknown_level(self):
        env = make_env("babyai")
        with pytest.raises(EnvError, match="Unknown BabyAI level 'NoSuchLevel'"):
            env.reset("NoSuchLevel", seed=0)

    def test_step_bound(self):
        env = make_env("babyai", max_steps=2)
        env.reset("GoToLocal", seed=1)
        assert not env.step("turn left").done and env.step("turn left").done
        with pytest.raises(EnvError, match="episode is over"):
            env.step("turn left")

    def test_perturbed_expert_plan(self):
        env = make_env("babyai", perturb=True)
        first = env.reset("GoToLocal", seed=1)
        assert "rotate left" in first.available_actions and "rotate left" in first.info["action_descriptions"]
        assert env.step("turn left").invalid
        env.reset("GoToLocal", seed=1)
        steps = play(env, [env.perturb_action(a) for a in env.env.expert_plan])
        assert steps[-1].success


@needs["pddl"]
class TestPDDL:
    def test_plan_solves_blocks(self):
        env = make_env("pddl")
        first = env.reset("blocks", seed=1)
        assert first.instruction.startswith("Reach a state where all of these facts hold: on(b, a)")
        assert "stack <block> <other block>" in first.available_actions
        plan = env.plan()
        steps = play(env, plan)
        assert not any(s.invalid for s in steps) and steps[-1].success and steps[-1].progress == 1.0
        assert len(plan) == 8

    def test_invalid_and_progress(self):
        env = make_env("pddl")
        env.reset("blocks", seed=1)
        inapplicable = env.step("unstack c")
        assert inapplicable.invalid and "is not applicable" in inapplicable.observation
        unknown = env.step("fly b")
        assert unknown.invalid and "is not an action of this domain" in unknown.observation
        ok = env.step("unstack(d)")  # function-call spelling is accepted too
        assert not ok.invalid and "You did 'unstack d'" in ok.observation
        goals = env._goal_literals()
        assert env.step("putdown d").progress == pytest.approx(
            sum(g in env._state.literals for g in goals) / len(goals)
        )

    def test_splits_are_different_problem_sets(self):
        train, test = make_env("pddl", split="train"), make_env("pddl", split="test")
        train.reset("blocks", seed=0)
        test.reset("blocks", seed=0)
        assert train.gym_id("blocks") == "PDDLEnvBlocks-v0" and test.gym_id("blocks") == "PDDLEnvBlocksTest-v0"
        assert train._u.problems[0].problem_fname != test._u.problems[0].problem_fname

    def test_unknown_domain(self):
        with pytest.raises(EnvError, match="Unknown PDDL domain 'nosuch'"):
            make_env("pddl").reset("nosuch", seed=0)


@needs["textworld"]
@pytest.mark.slow
class TestTextWorld:
    def test_walkthrough_wins_with_dense_progress(self, tmp_path):
        env = make_env("textworld", cache_dir=tmp_path)
        first = env.reset("simple", seed=0)
        assert first.instruction and "$$" not in first.observation and first.info["max_score"] > 1
        steps = play(env, env.walkthrough)
        assert not any(s.invalid for s in steps) and steps[-1].success and steps[-1].progress == 1.0
        assert 0 < steps[len(steps) // 2].progress < 1
        cached = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert cached == ["simple-test-0.json", "simple-test-0.z8"]

    def test_invalid_command_gets_game_feedback(self, tmp_path):
        env = make_env("textworld", cache_dir=tmp_path, tasks=["cooking"])
        env.reset(seed=0)
        bad = env.step("dance wildly")
        assert bad.invalid and bad.observation and not bad.done
        mtime = (tmp_path / "cooking-test-0.z8").stat().st_mtime_ns
        env.reset(seed=0)  # from the cache, not regenerated
        assert (tmp_path / "cooking-test-0.z8").stat().st_mtime_ns == mtime

    def test_concurrent_resets_and_steps_do_not_break_the_game_loader(self, tmp_path):
        """TextWorld's logic parser is one global object: threads loading games at once used to crash it."""
        import subprocess
        import sys

        from refine.envs.textworld import make_game_file

        for task, seed in (("simple", 0), ("cooking", 1)):
            make_game_file(task, seed, "test", tmp_path)
        # The race is in the first load of a process (TextWorld builds its parser lazily): load in a fresh one.
        script = f"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from refine.envs import make_env

def episode(i):
    env = make_env("textworld", cache_dir=Path({str(tmp_path)!r}), tasks=["simple", "cooking"])
    first = env.reset(seed=i % 2)
    return bool(first.instruction) and not env.step(env.walkthrough[0]).invalid

with ThreadPoolExecutor(6) as pool:
    print(all(pool.map(episode, range(6))))
"""
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]

    def test_perturbed_walkthrough(self, tmp_path):
        env = make_env("textworld", cache_dir=tmp_path, perturb=True)
        env.reset("simple", seed=0)
        walkthrough = list(env.env.walkthrough)
        steps = play(env, [env.perturb_action(a) for a in walkthrough])
        assert steps[-1].success


@pytest.fixture(scope="module")
def sw_env():
    env = make_env("scienceworld", gold=True)
    yield env
    env.close()


@needs["scienceworld"]
@pytest.mark.slow
class TestScienceWorld:
    @pytest.fixture
    def env(self, sw_env):
        return sw_env

    def test_gold_path_succeeds(self, env):
        first = env.reset("find-non-living-thing", seed=3)
        assert first.instruction.startswith("Your task is to find")
        assert "focus on <obj>" in first.available_actions
        steps = play(env, env.gold_path)
        assert not any(s.invalid for s in steps) and steps[-1].success and steps[-1].progress == 1.0

    def test_invalid_action(self, env):
        env.reset("find-plant", seed=0)
        bad = env.step("fly to the moon")
        assert bad.invalid and bad.observation == "No known action matches that input."
        assert env.step("reset task").invalid

    def test_splits_disjoint(self, env):
        test, train = env.variations("find-plant", "test"), env.variations("find-plant", "train")
        assert test and train and not set(test) & set(train)

    def test_java_missing(self, monkeypatch):
        from refine.envs import scienceworld

        monkeypatch.setattr(scienceworld.shutil, "which", lambda _: None)
        with pytest.raises(EnvError, match="default-jre-headless"):
            scienceworld.check_java()


def test_env_cache_env_var(monkeypatch, tmp_path):
    if importlib.util.find_spec("textworld") is None:
        pytest.skip("textworld not installed")
    from refine.envs.textworld import game_cache_dir

    monkeypatch.setenv("REFINE_CACHE", os.fspath(tmp_path))
    assert game_cache_dir() == tmp_path / "textworld"


@needs["scienceworld"]
def test_scienceworld_jvm_gets_lean_options_and_env_is_restored(monkeypatch):
    import scienceworld as sw

    from refine.envs import scienceworld

    seen = []

    class FakeSW:
        def __init__(self, task, envStepLimit):  # noqa: N803 - scienceworld's own keyword
            seen.append(os.environ.get("JAVA_TOOL_OPTIONS"))

    monkeypatch.setattr(sw, "ScienceWorldEnv", FakeSW)
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dmine=1")
    scienceworld.ScienceWorldEnv()
    scienceworld.ScienceWorldEnv(jvm_options="")
    assert seen == [f"-Dmine=1 {scienceworld.DEFAULT_JVM_OPTIONS}", "-Dmine=1"]
    assert os.environ["JAVA_TOOL_OPTIONS"] == "-Dmine=1"
    monkeypatch.delenv("JAVA_TOOL_OPTIONS")
    scienceworld.ScienceWorldEnv()
    assert seen[-1] == scienceworld.DEFAULT_JVM_OPTIONS and "JAVA_TOOL_OPTIONS" not in os.environ
