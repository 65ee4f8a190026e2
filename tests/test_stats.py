"""refine.eval.stats and the intervals of refine.eval: exact Wilson bounds, seeded bootstraps, paired differences."""

from __future__ import annotations

import pytest

from refine.eval import compare, summarize
from refine.eval.stats import bootstrap_mean, difference, newcombe, stratified_bootstrap, stratified_difference, wilson


def _ep(env, index, success, progress=None, seed=None, variant="base"):
    return {
        "env": env, "variant": variant, "index": index, "seed": index if seed is None else seed, "task": None,
        "success": success, "progress": float(success) if progress is None else progress, "steps": 3,
        "invalid_steps": 1, "repeated_steps": 0, "prompt_tokens": 1, "completion_tokens": 1,
    }  # fmt: skip


class TestWilson:
    def test_known_values(self):
        # Hand-checked against the closed form (Agresti & Coull 1998, table 1 style): 7/10 -> [0.397, 0.892].
        lo, hi = wilson(7, 10)
        assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)
        assert wilson(0, 4) == (0.0, pytest.approx(0.4899, abs=1e-4))
        assert wilson(4, 4)[1] == 1.0 and wilson(4, 4)[0] == pytest.approx(0.5101, abs=1e-4)
        assert wilson(0, 0) == (0.0, 1.0)

    def test_narrows_with_n(self):
        assert (lambda c: c[1] - c[0])(wilson(50, 100)) < (lambda c: c[1] - c[0])(wilson(5, 10))


class TestBootstrap:
    def test_seeded_and_bracketing_the_mean(self):
        vals = [0.0, 0.25, 0.5, 1.0, 0.75, 0.5]
        a, b = bootstrap_mean(vals), bootstrap_mean(vals)
        assert a == b and a[0] < sum(vals) / len(vals) < a[1]
        assert bootstrap_mean([]) == (0.0, 1.0)
        # No spread (0 of 4 solved): not a zero-width interval but Wilson's.
        assert bootstrap_mean([0.0] * 4) == wilson(0, 4) and stratified_bootstrap([[0.0] * 4, [1.0] * 4]) == (
            pytest.approx((wilson(0, 4)[0] + wilson(4, 4)[0]) / 2),
            pytest.approx((wilson(0, 4)[1] + wilson(4, 4)[1]) / 2),
        )

    def test_stratified_weighs_groups_equally(self):
        lo, hi = stratified_bootstrap([[1.0] * 50, [0.0, 1.0] * 2])
        assert 0.5 <= lo < 0.75 < hi  # macro mean 0.75 (each group weighs half), not the pooled 0.96

    def test_newcombe_contains_the_difference(self):
        lo, hi = newcombe(2, 10, 8, 10)
        assert lo < 0.6 < hi and lo > 0  # a clear improvement
        assert newcombe(0, 0, 1, 1) == (-1.0, 1.0)


class TestDifference:
    def test_paired_identical_runs_have_zero_width(self):
        d = difference([1, 0, 1], [1, 0, 1], paired=True)
        assert d["delta"] == 0 and d["ci"] == [0.0, 0.0] and d["paired"]

    def test_paired_is_tighter_than_unpaired_on_correlated_episodes(self):
        a = [0.1 * i for i in range(10)]
        b = [x + 0.05 for x in a]
        paired = difference(a, b, paired=True)
        unpaired = difference(a, b, paired=False)
        assert paired["delta"] == pytest.approx(0.05) == unpaired["delta"]
        assert paired["ci"] == [pytest.approx(0.05), pytest.approx(0.05)]
        assert unpaired["ci"][0] < 0 < unpaired["ci"][1]

    def test_paired_needs_equal_lengths(self):
        with pytest.raises(ValueError, match="same episodes on both sides"):
            difference([1], [1, 0], paired=True)

    def test_stratified_difference(self):
        d = stratified_difference([[0, 0, 0, 0], [1, 1]], [[1, 1, 1, 1], [1, 1]])
        assert d["delta"] == 0.5 and d["ci"] == [0.5, 0.5] and d["n_a"] == 6 and not d["paired"]


class TestSummaryIntervals:
    def test_every_rate_has_n_and_interval_and_small_cells_are_warned(self):
        recs = [_ep("a", i, i % 2 == 0) for i in range(4)] + [_ep("b", i, True) for i in range(20)]
        s = summarize(recs, settings={"suite": "refine", "max_steps": 30})
        a = s["envs"]["a"]["base"]
        assert a["n"] == 4 and a["success_rate"] == 0.5
        assert a["success_ci"] == [pytest.approx(0.15, abs=0.01), pytest.approx(0.85, abs=0.01)]
        assert a["progress_ci"][0] < 0.5 < a["progress_ci"][1]
        assert a["invalid_ci"][0] < a["invalid_rate"] < a["invalid_ci"][1] and a["small_n"]
        assert not s["envs"]["b"]["base"]["small_n"]
        assert s["overall"]["base"]["n"] == 24 and s["overall"]["base"]["success_ci"][1] > 0.75
        assert s["warnings"] == [
            "a (original actions): n=4 episodes < 20; its rates are too uncertain to compare (see the intervals)."
        ]
        assert s["suite"] == "refine" and s["settings"]["max_steps"] == 30


class TestCompare:
    def test_paired_when_the_same_episodes_were_played(self):
        ref = [_ep("a", i, False) for i in range(6)] + [_ep("b", i, True) for i in range(6)]
        run = [_ep("a", i, i < 3) for i in range(6)] + [_ep("b", i, True) for i in range(6)]
        d = compare(ref, run)
        a = d["envs"]["a"]["base"]["success"]
        assert a["paired"] and a["delta"] == 0.5 and a["ci"][0] > 0 and (a["n_a"], a["n_b"]) == (6, 6)
        assert d["envs"]["b"]["base"]["progress"]["delta"] == 0
        overall = d["overall"]["base"]["success"]
        assert overall["paired"] and overall["delta"] == 0.25  # macro: (0.5 + 0) / 2

    def test_unpaired_when_the_episodes_differ(self):
        ref = [_ep("a", i, False) for i in range(5)]
        run = [_ep("a", i, True, seed=100 + i) for i in range(5)]
        d = compare(ref, run)
        assert not d["envs"]["a"]["base"]["success"]["paired"] and not d["overall"]["base"]["success"]["paired"]
        assert d["envs"]["a"]["base"]["success"]["delta"] == 1.0
        assert d["envs"]["a"]["base"]["success"]["ci"] == list(newcombe(0, 5, 5, 5))
