"""The agentboard suite: action lists, progress rules and success rules pinned on hand-checked steps."""

from __future__ import annotations

import json

import pytest

from refine.envs import check_env, make_env
from refine.envs.agentboard import (
    BABYAI_LEVELS,
    BABYAI_SEEDS,
    AgentBoardPDDL,
    _PatternProgress,
    load_annotations,
    match_pattern,
)
from refine.errors import EnvError


class TestRules:
    def test_pattern_match_is_per_sentence(self):
        assert match_pattern("You pick up the red ball. The task is completed.", "pick up*red ball")
        assert not match_pattern("You pick up the key. The red ball is far.", "pick up*red ball")

    def test_one_subgoal_per_step_with_alternatives(self):
        p = _PatternProgress([["red ball", "blue door"], ["green key", "blue door"]])
        p.update("You see a red ball. You see a blue door.")  # both match; only one is credited this step
        assert p.points == 1 and p.progress == 0.5
        p.update("You see a blue door.")
        assert p.progress == 1.0

    def test_level_list_and_seeds(self):
        assert len(BABYAI_LEVELS) == 28 and BABYAI_SEEDS == (1234, 1235, 1236, 1237)

    def test_annotations_file_errors(self, tmp_path):
        with pytest.raises(EnvError, match=r"No AgentBoard annotations at .*babyai/test\.jsonl"):
            load_annotations(tmp_path, "babyai")
        (tmp_path / "babyai").mkdir()
        (tmp_path / "babyai" / "test.jsonl").write_text('{"subgoals": ["a"], "difficulty": "easy"}\nnot json\n')
        with pytest.raises(EnvError, match=r"test\.jsonl:2 is not JSON"):
            load_annotations(tmp_path, "babyai")

    def test_missing_pddl_domains_are_named(self):
        with pytest.raises(EnvError, match=r"'barman' is not shipped by pddlgym 0\.0\.7"):
            AgentBoardPDDL.check_options({"tasks": ["barman"]})
        with pytest.raises(EnvError, match="AgentBoard has no TextWorld"):
            check_env("textworld", "agentboard")


@pytest.fixture(scope="module")
def babyai():
    pytest.importorskip("minigrid")
    return make_env("babyai", suite="agentboard")


class TestBabyAI:
    def test_first_episode_hand_checked(self, babyai):
        first = babyai.reset(seed=0)  # GoToRedBallGrey, seed 1234
        assert first.info["task"] == "GoToRedBallGrey" and first.info["seed"] == 1234
        assert first.info["suite"] == "agentboard" and first.info["progress_source"] == "derived"
        # Hand-checked: the agent faces a wall one step away and sees no object.
        assert first.observation.startswith("You cannot see any objects within sight.")
        assert "You are facing a wall 1 steps away." in first.observation
        assert first.info["valid_actions"] == ["turn left", "turn right", "check available actions"]
        listed = babyai.step("check available actions")
        assert (
            listed.observation == "You can take the following actions: turn left, turn right, check available actions"
        )
        assert not listed.invalid and listed.progress == 0.0 and not listed.done
        blocked = babyai.step("move forward")
        assert blocked.invalid and blocked.observation == "There is a barrier in front of you, you can't move forward."
        bad = babyai.step("fly to the moon")
        assert bad.invalid and bad.observation == "The action is not recognized. Please check valid actions."
        # Episode 3 (seed 1237): the red ball is 2 steps ahead; one high-level action (BFS: forward) does the mission.
        first = babyai.reset(seed=3)
        assert "There is a red ball 1 right in front of you 2 steps away." in first.observation
        assert "go to red ball 1" in first.info["valid_actions"] and "pickup red ball 1" in first.info["valid_actions"]
        step = babyai.step("go to red ball 1")
        assert step.success and step.done and step.progress == 1.0
        assert step.observation.endswith("The task is completed.")

    def test_done_is_cancelled_at_or_below_half_progress_with_annotations(self, tmp_path):
        pytest.importorskip("minigrid")
        rows = [{"subgoals": ["never seen", "also never", "The task is completed"], "difficulty": "easy"}] * 112
        (tmp_path / "babyai").mkdir()
        (tmp_path / "babyai" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        env = make_env("babyai", suite="agentboard", annotations=str(tmp_path))
        first = env.reset(seed=3)
        assert first.info["progress_source"] == "annotations"
        step = env.step("go to red ball 1")
        # The mission is complete but only 1 of 3 annotated subgoals matched: AgentBoard cancels the done.
        assert step.progress == pytest.approx(1 / 3) and not step.done and not step.success

    def test_expert_solves_the_first_levels(self, babyai):
        from refine.eval import run_episode
        from refine.eval.reference_agents import ExpertAgent

        for i in range(12):  # GoToRedBallGrey, GoToRedBall, GoToRedBallNoDists x 4 seeds
            rec = run_episode(ExpertAgent(), babyai, {"env": "babyai", "seed": i}, 30)
            assert rec["success"] and rec["progress"] == 1.0 and rec["invalid_steps"] == 0, (i, rec["error"])


class TestPDDL:
    def test_english_facts_and_agentboard_wording(self):
        pytest.importorskip("pddlgym")
        env = make_env("pddl", suite="agentboard", tasks=["blockworld"])
        first = env.reset(seed=0)
        assert "Current state" not in first.observation and " is on the table." in first.observation
        assert first.instruction.startswith("The goal is to satisfy the following conditions: ")
        assert first.available_actions[-1] == "check valid actions"
        listed = env.step("check valid actions")
        assert listed.observation.startswith("Valid actions are: ") and not listed.invalid
        action = env.valid_actions()[0]
        assert action.startswith(("pick up ", "unstack "))
        st = env.step(action)
        assert not st.invalid and "You are holding" in st.observation
        # Progress: fraction of goal facts that hold; success only when all do.
        goals = env._goal_literals()
        assert st.progress == sum(g in env._state.literals for g in goals) / len(goals) and not st.success

    def test_gripper_wording_round_trip(self):
        """Regression: building the AgentBoard text of a 2-argument 'move' evaluated the 3-argument forms too."""
        pytest.importorskip("pddlgym")
        env = make_env("pddl", suite="agentboard", tasks=["gripper"])
        first = env.reset(seed=1)
        moves = [a for a in first.info["valid_actions"] if a.startswith("move from ")]
        assert moves and all(" to " in m for m in moves)
        picks = [a for a in env.valid_actions() if a.startswith("pick ")]
        st = env.step(picks[0])
        assert not st.invalid and " is carried by " in st.observation


@pytest.mark.slow
class TestScienceWorld:
    def test_rules_hand_checked(self):
        """find-non-living-thing, test variation 225 (episode 0), played by hand: action list, progress from
        ScienceWorld's two sequential subgoals, success at score 100, no early stop and no reset."""
        pytest.importorskip("scienceworld")
        from refine.envs.agentboard import SCIENCEWORLD_SIMPLIFICATION
        from refine.envs.scienceworld import ACTION_TEMPLATES

        env = make_env("scienceworld", suite="agentboard", gold=True)
        try:
            first = env.reset(seed=0)
            assert (env.task, env.variation) == ("find-non-living-thing", 225)
            assert (
                first.info["simplification"]
                == SCIENCEWORLD_SIMPLIFICATION
                == ("selfWateringFlowerPots,openContainers,openDoors,noElectricalAction")
            )
            assert first.info["progress_source"] == "subgoals" and first.info["suite"] == "agentboard"
            assert first.available_actions == list(ACTION_TEMPLATES)
            assert first.instruction.startswith("Your task is to find a(n) non-living thing. First, focus on")
            assert first.info["expert_steps"] == 7 and first.info["solvable"]
            refused = env.step("reset task")
            assert refused.invalid and refused.observation == "Resetting the task is not allowed."
            unknown = env.step("fly to the moon")
            assert unknown.invalid and unknown.observation == "No known action matches that input."
            looked = env.step("look around")
            assert not looked.invalid and looked.progress == 0.0 and not looked.done
            # The gold path (7 steps; its object may differ between resets): progress 0 until the focus (1 of 2
            # sequential subgoals), success when the object is in the box (score 100), which ends the episode.
            env.reset(seed=0)
            assert len(env.gold_path) == 7 and env.gold_path[5].startswith("focus on ")
            progress = [env.step(a) for a in env.gold_path]
            assert [st.progress for st in progress] == [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0]
            assert [st.done for st in progress] == [False] * 6 + [True]
            assert progress[-1].success and progress[-1].info["score"] == 100
            assert not any(st.success for st in progress[:-1])
            # No early stop: whatever ScienceWorld makes of a focus on the agent, only success or the bound end it.
            env.reset(seed=0)
            st = env.step("focus on agent")
            assert not st.done and not st.success
            assert not env.step("look around").done
        finally:
            env.close()
