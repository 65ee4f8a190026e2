"""Rule-by-rule tests of the verifier (`refine.verify`), the regex time bound, and its use as a DSPy/GEPA metric."""

from __future__ import annotations

import time

import dspy
import pytest

from refine.data import ActionSpec, Script, Trajectory, Verdict
from refine.verify import match_action, verifier_metric, verify_script, verify_trajectory
from tests.test_synth_support import bad_turns, good_turns, tea_script


class TestVerifyScript:
    def test_well_formed_script_passes_with_checks_counted(self):
        v = verify_script(tea_script())
        assert v.ok and v.stage == "script" and v.reasons == []
        assert v.checks >= 10 and v.score == 1.0

    def test_duplicate_action_names(self):
        s = tea_script()
        s.actions = [*s.actions, s.actions[0].model_copy(update={"name": "Take"})]
        v = verify_script(s)
        assert v.reasons == ["script: action names are not unique: ['take']"]

    def test_pattern_that_does_not_compile(self):
        s = tea_script()
        s.actions = [ActionSpec(name="go", pattern=r"^go (?P<p>\w+$", parameters={"p": ["a"]})]
        v = verify_script(s)
        assert len(v.reasons) == 1
        assert v.reasons[0].startswith("script: action 'go': pattern '^go (?P<p>\\\\w+$' does not compile")

    def test_group_without_allowed_values_and_parameter_without_group(self):
        s = tea_script()
        s.actions = [ActionSpec(name="go", pattern=r"^go (?P<place>\w+)$", parameters={"where": ["x"]})]
        assert verify_script(s).reasons == [
            "script: action 'go': pattern groups ['place'] have no allowed values",
            "script: action 'go': parameters ['where'] are not named groups (?P<name>...) of the pattern",
        ]

    def test_parameter_with_empty_value_list(self):
        s = tea_script()
        s.actions = [ActionSpec(name="go", pattern=r"^go (?P<place>\w+)$", parameters={"place": []})]
        assert verify_script(s).reasons == ["script: action 'go': parameter 'place' has no allowed values"]

    def test_empty_environment_tasks_actions(self):
        v = verify_script(Script(environment=" ", tasks=[], actions=[]))
        assert v.reasons == [
            "script: the environment description is empty",
            "script: no task is given",
            "script: no available action is given",
        ]
        assert 0.0 <= v.score < 1.0


class TestMatchAction:
    def test_valid_action_with_case_and_space_normalised(self):
        spec, params, problems = match_action(tea_script(), "  fill   Kettle at TAP ")
        assert spec is not None and spec.name == "fill"
        assert params == {"obj": "Kettle", "source": "TAP"} and problems == []

    def test_disallowed_value(self):
        spec, params, problems = match_action(tea_script(), "fill kettle at sink")
        assert spec.name == "fill" and params == {"obj": "kettle", "source": "sink"}
        assert problems == [
            "action 'fill kettle at sink': parameter 'source'='sink' is not an allowed value of 'fill' "
            "(allowed: ['tap'])"
        ]

    def test_no_pattern_matches(self):
        assert match_action(tea_script(), "dance") == (
            None,
            {},
            ["action 'dance' matches no available action's pattern"],
        )

    def test_empty_action(self):
        assert match_action(tea_script(), "") == (None, {}, ["empty action"])

    def test_catastrophic_regex_times_out_fast_and_becomes_a_problem(self):
        s = Script(environment="e", tasks=["t"], actions=[ActionSpec(name="evil", pattern=r"^(a|aa)+$")])
        t0 = time.perf_counter()
        spec, _, problems = match_action(s, "a" * 40 + "!")
        assert time.perf_counter() - t0 < 2.0
        assert spec is None
        assert problems[0].startswith("pattern of action 'evil' timed out after")
        assert "catastrophic backtracking" in problems[0]


def _traj(turns, script=None):
    return Trajectory(script=script or tea_script(), turns=turns)


class TestVerifyTrajectory:
    def test_correct_trajectory_is_accepted(self):
        v = verify_trajectory(_traj(good_turns()))
        assert v.ok and v.stage == "trajectory" and v.score == 1.0

    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            (
                "unflagged_param",
                [
                    "turn 3: the DM flagged no parameter_error, but action 'fill kettle at sink': parameter "
                    "'source'='sink' is not an allowed value of 'fill' (allowed: ['tap'])"
                ],
            ),
            (
                "false_param",
                [
                    "turn 1: the DM flagged parameter_error, but action 'take kettle' matches an available action "
                    "with allowed values",
                    # the flag makes 'take kettle' an error, so its episode bookkeeping shifts but the count stays 2
                ],
            ),
            ("few_refinements", ["trajectory: 1 error -> fix episode(s), at least 2 required"]),
            (
                "not_completed",
                [
                    "trajectory: the last turn does not complete the task (a DM turn with task_completed and no error "
                    "flag)"
                ],
            ),
            ("early_completion", ["trajectory: task_completed is set before the last turn (turns [5])"]),
        ],
    )
    def test_each_rule(self, kind, expected):
        assert verify_trajectory(_traj(bad_turns(kind))).reasons == expected

    def test_turns_must_alternate_starting_with_player(self):
        reasons = verify_trajectory(_traj(bad_turns("order"))).reasons
        assert reasons[0] == "turn 0: expected a player turn, got a dm turn (turns must alternate)"

    def test_min_refinements_is_configurable(self):
        t = _traj(bad_turns("few_refinements"))
        assert verify_trajectory(t, min_refinements=1).ok
        assert verify_trajectory(_traj(good_turns()), min_refinements=3).reasons == [
            "trajectory: 2 error -> fix episode(s), at least 3 required"
        ]

    def test_missing_action_and_observation(self):
        t = good_turns()
        t[0] = t[0].model_copy(update={"action": None})
        t[3] = t[3].model_copy(update={"observation": ""})
        reasons = verify_trajectory(_traj(t)).reasons
        assert "turn 0: the player turn has no action" in reasons
        assert "turn 3: the DM turn has no observation" in reasons

    def test_script_reasons_are_included(self):
        s = tea_script()
        s.actions = [*s.actions, ActionSpec(name="bad", pattern="(", parameters={})]
        reasons = verify_trajectory(_traj(good_turns(), s)).reasons
        assert any(r.startswith("script: action 'bad': pattern '(' does not compile") for r in reasons)

    def test_empty_trajectory(self):
        reasons = verify_trajectory(_traj([])).reasons
        assert reasons[0] == "trajectory: no turns"


class TestMetric:
    def test_trajectory_prediction_scores_and_feedback(self):
        good = verifier_metric(dspy.Example(), dspy.Prediction(trajectory=_traj(good_turns())))
        assert good.score == 1.0 and float(good) == 1.0
        assert good.feedback == "The trajectory passed every check."
        bad = verifier_metric(None, dspy.Prediction(trajectory=_traj(bad_turns("few_refinements"))), None, "x", None)
        assert 0.0 < bad.score < 1.0
        assert "at least 2 required" in bad.feedback

    def test_min_refinements_from_example(self):
        ex = dspy.Example(min_refinements=1)
        assert verifier_metric(ex, dspy.Prediction(trajectory=_traj(bad_turns("few_refinements")))).score == 1.0

    def test_script_prediction_and_malformed_script(self):
        assert verifier_metric(None, dspy.Prediction(script=tea_script())).score == 1.0
        bad = verifier_metric(None, dspy.Prediction(script={"environment": 3}))
        assert bad.score == 0.0 and "script could not be read" in bad.feedback

    def test_parse_failure_verdict_is_kept(self):
        traj = _traj([]).model_copy(
            update={"verdict": Verdict(ok=False, reasons=["parse: no JSON"], stage="parse", checks=1)}
        )
        out = verifier_metric(None, dspy.Prediction(trajectory=traj))
        assert out.score == 0.0 and "parse: no JSON" in out.feedback

    def test_nothing_to_verify(self):
        out = verifier_metric(None, dspy.Prediction(answer="x"))
        assert out.score == 0.0 and "neither a trajectory nor a script" in out.feedback


class TestTotalTimeCap:
    """Issue #16 item 10: the verifier's time is bounded per trajectory, not only per match."""

    def test_many_evil_patterns_over_many_turns_stop_at_the_cap_with_a_reason(self):
        from refine.data import Turn

        evil = [ActionSpec(name=f"a{i}", pattern=r"^(a|aa)+$", parameters={}) for i in range(60)]
        script = Script(environment="A room.", tasks=["say a"], actions=evil)
        turns = []
        for _ in range(60):
            turns += [
                Turn(role="player", action="a" * 40 + "!"),
                Turn(role="dm", observation="no", parameter_error=True),
            ]
        t0 = time.perf_counter()
        v = verify_trajectory(Trajectory(script=script, turns=turns), min_refinements=0, time_cap_s=0.3)
        took = time.perf_counter() - t0
        assert took < 1.5, f"verification took {took:.1f} s"
        cap = [r for r in v.reasons if "verification time cap of 0.3 s reached" in r]
        assert len(cap) == 1 and not v.ok

    def test_a_normal_trajectory_is_far_below_the_cap(self):
        from refine.verify import TRAJECTORY_TIME_CAP_S

        traj = Trajectory(script=tea_script(), turns=good_turns())
        t0 = time.perf_counter()
        assert verify_trajectory(traj).ok
        assert time.perf_counter() - t0 < TRAJECTORY_TIME_CAP_S / 10
