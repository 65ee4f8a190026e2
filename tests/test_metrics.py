"""Metrics for optimization: verifier-backed stage metrics, episode and label metrics, wrapping user metrics."""

from __future__ import annotations

import dspy
import pytest

from refine.data import Trajectory, Verdict
from refine.errors import ConfigError
from refine.optimizers.metrics import (
    METRICS,
    as_feedback_metric,
    default_metric_for,
    episode_metric,
    label_match_metric,
    resolve_metric,
    script_metric,
    trajectory_metric,
    verdict_metric,
    verifier_metric,
)
from tests.test_synth_support import bad_turns, good_turns, tea_script


def _five(metric, pred, gold=None):
    return metric(gold or dspy.Example(), pred, None, "p", None)


class TestVerifierMetrics:
    def test_accepted_trajectory_scores_one(self):
        res = _five(trajectory_metric, dspy.Prediction(trajectory=Trajectory(script=tea_script(), turns=good_turns())))
        assert res.score == 1.0 and "passed every check" in res.feedback

    def test_rejected_trajectory_scores_the_fraction_of_checks_with_reasons_as_feedback(self):
        traj = Trajectory(script=tea_script(), turns=bad_turns("few_refinements"))
        res = trajectory_metric(dspy.Example(), dspy.Prediction(trajectory=traj))
        assert 0.0 < res.score < 1.0
        assert "1 error -> fix episode(s), at least 2 required" in res.feedback

    def test_example_min_refinements_is_honoured(self):
        traj = Trajectory(script=tea_script(), turns=bad_turns("few_refinements"))
        gold = dspy.Example(persona="p", min_refinements=1).with_inputs("persona")
        assert trajectory_metric(gold, dspy.Prediction(trajectory=traj)).score == 1.0

    def test_missing_trajectory_is_a_zero_with_the_run_error(self):
        res = trajectory_metric(dspy.Example(), dspy.Prediction(trajectory=None, error="gen: LMOutputError: bad"))
        assert res.score == 0.0
        assert res.feedback.startswith("The program produced no trajectory (gen: LMOutputError: bad).")

    def test_script_metric_on_script_and_on_trajectory_script(self):
        assert script_metric(dspy.Example(), dspy.Prediction(script=tea_script())).score == 1.0
        traj = Trajectory(script=tea_script(), turns=bad_turns("few_refinements"))
        assert script_metric(dspy.Example(), dspy.Prediction(trajectory=traj)).score == 1.0  # script stage is fine
        broken = tea_script()
        broken.environment = " "
        res = script_metric(dspy.Example(), dspy.Prediction(script=broken))
        assert res.score < 1.0 and "the environment description is empty" in res.feedback

    def test_script_metric_bad_json(self):
        res = script_metric(dspy.Example(), dspy.Prediction(script="{not json"))
        assert res.score == 0.0 and res.feedback.startswith("The script is not valid JSON")

    def test_verdict_metric_uses_the_attached_verdict(self):
        pred = dspy.Prediction(verdict=Verdict(ok=False, reasons=["a", "b"], checks=8))
        res = verdict_metric(dspy.Example(), pred)
        assert res.score == 0.75 and "- a\n- b" in res.feedback

    def test_builtin_names(self):
        assert set(METRICS) == {"verifier", "verdict", "script", "trajectory", "episode", "label_match"}
        assert METRICS["verifier"] is verifier_metric


class TestEpisodeAndLabels:
    def test_episode_success_progress_and_feedback(self):
        assert episode_metric(None, dspy.Prediction(success=True, progress=1.0)).score == 1.0
        res = episode_metric(
            None, dspy.Prediction(success=False, progress=1 / 3, observation="The door is locked.", reflections=["x"])
        )
        assert res.score == pytest.approx(1 / 3)
        assert "not completed (progress 33%)" in res.feedback and "The door is locked." in res.feedback

    def test_episode_without_progress(self):
        assert episode_metric(None, dspy.Prediction(success=False, progress="n/a")).score == 0.0

    def test_label_match_normalises_case_space_and_final_period(self):
        gold = dspy.Example(task="t", output="Forty  two.").with_inputs("task")
        assert label_match_metric(gold, dspy.Prediction(output="forty two")).score == 1.0
        res = label_match_metric(gold, dspy.Prediction(output="41"))
        assert res.score == 0.0 and "output: expected 'Forty  two.', got '41'" in res.feedback

    def test_label_match_needs_labels(self):
        with pytest.raises(ConfigError, match="needs examples with reference fields besides the inputs"):
            label_match_metric(dspy.Example(task="t").with_inputs("task"), dspy.Prediction(output="x"))


class TestUserMetrics:
    @pytest.mark.parametrize(
        ("fn", "score", "feedback"),
        [
            (lambda g, p: True, 1.0, "Score: 1.000"),
            (lambda g, p, trace=None: 0.25, 0.25, "Score: 0.250"),
            (lambda g, p, t, n, pt: {"score": 0.5, "feedback": "half"}, 0.5, "half"),
            (lambda g, p, t=None: dspy.Prediction(score=2.0, feedback="clipped"), 1.0, "clipped"),
        ],
    )
    def test_wrapped_into_five_arg_feedback_form(self, fn, score, feedback):
        res = as_feedback_metric(fn)(dspy.Example(), dspy.Prediction(), None, None, None)
        assert (res.score, res.feedback) == (score, feedback)

    def test_bad_return_type(self):
        wrapped = as_feedback_metric(lambda g, p: "good")
        with pytest.raises(ConfigError, match="returned str; return a bool, a number"):
            wrapped(dspy.Example(), dspy.Prediction())

    def test_too_few_arguments(self):
        with pytest.raises(ConfigError, match=r"must accept \(example, prediction\[, trace\]\)"):
            as_feedback_metric(lambda p: 1.0)

    def test_resolve_by_name_spec_and_callable(self):
        assert resolve_metric("episode") is episode_metric
        spec = resolve_metric("tests.test_metrics:exact_output")
        assert spec(dspy.Example(output="a"), dspy.Prediction(output="a")).score == 1.0
        assert resolve_metric(exact_output)(dspy.Example(output="a"), dspy.Prediction(output="b")).score == 0.0

    def test_resolve_errors(self):
        with pytest.raises(ConfigError, match=r"Unknown metric 'nope'\. Use a built-in name"):
            resolve_metric("nope")
        with pytest.raises(ConfigError, match=r"Cannot import metric 'tests\.test_metrics:missing'"):
            resolve_metric("tests.test_metrics:missing")

    def test_default_metric_from_outputs(self):
        assert default_metric_for(["trajectory"]) is verifier_metric
        assert default_metric_for(["script"]) is verifier_metric
        assert default_metric_for(["verdict", "trajectory"]) is verdict_metric
        assert default_metric_for(("success", "progress")) is episode_metric
        assert default_metric_for(["output"]) is label_match_metric
        assert default_metric_for(None) is label_match_metric


def exact_output(example, pred):
    return example.output == pred.output
