"""Prompt optimization runs: each DSPy method raises the devset score and writes a loadable program, the LM budget
is never exceeded, GEPA resumes from its log dir, and the estimate follows the optimizers' own budget formulas."""

from __future__ import annotations

import json
import uuid

import dspy
import pytest

from refine.errors import ConfigError
from refine.optimizers import Budget, BudgetExhaustedError, OptimizeConfig, estimate_cost, load_optimized, optimize
from refine.optimizers.prompt_opt import calls_per_run, load_examples
from refine.programs.self_refine import build_graph
from tests.test_optimize_support import NEW_INSTRUCTION, arith_rows, make_lm

TRAIN, DEV = arith_rows(6), arith_rows(6, start=100)


def _history_tokens(lm: dspy.BaseLM) -> int:
    return sum((h.get("usage") or {}).get("total_tokens", 0) for h in lm.history)


class TestMethods:
    @pytest.mark.parametrize("method", ["bootstrap", "mipro", "gepa"])
    def test_method_raises_dev_score_and_saves_loadable_program(self, method, tmp_path):
        lm = make_lm()
        res = optimize(
            "self_refine", method=method, preset="light", trainset=TRAIN, devset=DEV, lm=lm, out=tmp_path / "o"
        )
        assert res.status == "completed"
        assert res.score_before == pytest.approx(0.5)
        assert res.score_after == pytest.approx(1.0)
        assert res.spend.calls == lm.calls  # every engine call was counted
        assert any(c.changed for c in res.changes)
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        assert report["score_after"] == pytest.approx(1.0) and report["spend"]["calls"] == lm.calls
        assert "## Changed predictors" in (tmp_path / "o" / "report.md").read_text()
        loaded = load_optimized(tmp_path / "o")
        with dspy.context(lm=make_lm()):
            assert all(loaded(task=r["task"]).output == r["output"] for r in DEV)

    def test_gepa_rewrites_instructions_and_report_shows_the_diff(self, tmp_path):
        res = optimize(
            "self_refine",
            method="gepa",
            trainset=TRAIN,
            devset=DEV,
            lm=make_lm(),
            out=tmp_path,
            optimizer_kwargs={"max_metric_calls": 100},
        )
        draft = next(c for c in res.changes if c.name == "nodes['draft']")
        assert draft.new_instructions == NEW_INSTRUCTION
        assert f"+{NEW_INSTRUCTION}" in draft.diff
        assert f"+{NEW_INSTRUCTION}" in (tmp_path / "report.md").read_text()

    def test_bootstrap_adds_demos(self):
        res = optimize(build_graph(), method="bootstrap", trainset=TRAIN, devset=DEV, lm=make_lm())
        assert {c.name: c.demos_after for c in res.changes}["nodes['draft']"] >= 1
        assert res.paths == {}  # no out dir, nothing written

    def test_devset_defaults_to_trainset(self):
        res = optimize("self_refine", method="bootstrap", trainset=TRAIN, lm=make_lm())
        assert res.score_after == pytest.approx(1.0)

    def test_reoptimizing_a_saved_program_keeps_its_spec(self, tmp_path):
        optimize("self_refine", method="bootstrap", trainset=TRAIN, devset=DEV, lm=make_lm(), out=tmp_path / "a")
        res = optimize(
            str(tmp_path / "a"),
            method="gepa",
            trainset=TRAIN,
            devset=DEV,
            lm=make_lm(),
            out=tmp_path / "b",
            optimizer_kwargs={"max_metric_calls": 30},
        )
        assert res.score_before == pytest.approx(1.0)
        assert json.loads((tmp_path / "b" / "report.json").read_text())["config"]["program"] == "self_refine"
        assert load_optimized(tmp_path / "b").nodes["draft"].demos


class TestBudget:
    @pytest.mark.parametrize(("method", "max_calls"), [("bootstrap", 20), ("mipro", 60), ("gepa", 150)])
    def test_call_budget_never_exceeded(self, method, max_calls, tmp_path):
        lm = make_lm()
        res = optimize(
            "self_refine", method=method, trainset=TRAIN, devset=DEV, lm=lm, max_calls=max_calls, out=tmp_path
        )
        assert lm.calls <= max_calls
        assert res.spend.calls == lm.calls
        assert res.status == "budget_exhausted"
        assert res.score_after is None
        assert "LM budget exhausted" in res.message
        assert json.loads((tmp_path / "report.json").read_text())["status"] == "budget_exhausted"
        load_optimized(tmp_path)  # what was kept is still a loadable program

    def test_token_budget_never_exceeded_with_threads(self):
        lm = make_lm()
        res = optimize(
            "self_refine", method="gepa", trainset=TRAIN, devset=DEV, lm=lm, max_tokens=15_000, num_threads=4
        )
        assert res.status == "budget_exhausted"
        assert _history_tokens(lm) == res.spend.tokens <= 15_000

    def test_exhausted_during_baseline_keeps_the_program_and_has_no_scores(self):
        lm = make_lm()
        res = optimize("self_refine", method="bootstrap", trainset=TRAIN, devset=DEV, lm=lm, max_calls=5)
        assert (res.status, res.score_before, res.score_after, lm.calls) == ("budget_exhausted", None, None, 5)
        assert "baseline phase" in res.message
        assert not any(c.changed for c in res.changes)

    def test_budget_refuses_before_sending_and_stays_refusing(self):
        base = make_lm()
        budget = Budget(max_calls=2)
        lm = budget.wrap(base)
        with dspy.context(lm=lm):
            predict = dspy.Predict("task -> output")
            predict(task="What is 1 + 2?")
            predict(task="What is 2 + 2?")
            with pytest.raises(BudgetExhaustedError, match=r"2/2 calls used.*Raise --max-calls"):
                predict(task="What is 3 + 2?")
        assert base.calls == 2 and budget.exhausted and budget.refused == 1

    def test_token_reservation_uses_max_tokens_bound(self):
        budget = Budget(max_tokens=250)
        lm = budget.wrap(make_lm(max_tokens=200))
        # Prompt bytes (ratio 1.0 before calibration) + 200 output tokens exceed 250: refused, nothing sent.
        with pytest.raises(BudgetExhaustedError, match=r"0/250 tokens used \(the next call may need up to \d+\)"):
            lm("x" * 100)
        assert budget.spent.calls == 0

    def test_cache_hits_are_not_charged(self):
        from refine.testing import ScriptedLM
        from tests.test_optimize_support import respond

        budget = Budget(max_calls=2)
        # A fresh model name per run: the disk cache must not answer the first call.
        base = ScriptedLM(respond, cache=True, model=f"fake/cached-{uuid.uuid4().hex}")
        lm = budget.wrap(base)
        with dspy.context(lm=lm):
            predict = dspy.Predict("task -> output")
            first = predict(task="What is 40 + 2?").output
            assert predict(task="What is 40 + 2?").output == first  # served from the cache
            assert budget.spent.calls == base.calls == 1
            predict(task="What is 41 + 2?")  # the second real call still fits
        assert budget.spent.calls == base.calls == 2

    def test_wrapped_lm_shares_history_and_copies_share_budget(self):
        from dspy.utils import DummyLM

        base = DummyLM([{"output": "1"}] * 3)
        budget = Budget(max_calls=1)
        lm = budget.wrap(base)
        with dspy.context(lm=lm):
            dspy.Predict("task -> output")(task="hello")
        assert len(base.history) == 1
        with dspy.context(lm=lm.copy()), pytest.raises(BudgetExhaustedError):
            dspy.Predict("task -> output")(task="again")


class TestResume:
    def test_gepa_resumes_from_its_log_dir(self, tmp_path):
        log = tmp_path / "gepa"
        gepa = {"max_metric_calls": 300}
        first = optimize(
            "self_refine",
            method="gepa",
            trainset=TRAIN,
            devset=DEV,
            lm=make_lm(),
            max_calls=150,
            log_dir=log,
            optimizer_kwargs=gepa,
        )
        assert first.status == "budget_exhausted"
        assert (log / "gepa_state.bin").is_file()
        resumed = optimize(
            "self_refine", method="gepa", trainset=TRAIN, devset=DEV, lm=make_lm(), log_dir=log, optimizer_kwargs=gepa
        )
        fresh = optimize(
            "self_refine",
            method="gepa",
            trainset=TRAIN,
            devset=DEV,
            lm=make_lm(),
            log_dir=tmp_path / "fresh",
            optimizer_kwargs=gepa,
        )
        assert resumed.status == fresh.status == "completed"
        assert resumed.score_after == pytest.approx(1.0)
        # The resumed run skipped the metric calls the first run had already made.
        assert resumed.spend.calls < fresh.spend.calls


class TestEstimate:
    def test_dry_run_makes_no_call(self, tmp_path):
        lm = make_lm()
        res = optimize("self_refine", method="mipro", trainset=TRAIN, devset=DEV, lm=lm, dry_run=True, out=tmp_path)
        assert res.status == "dry_run" and lm.calls == 0 and not any(tmp_path.iterdir())
        assert res.estimate.calls > 0 and res.estimate.tokens > 0

    def test_calls_per_run_from_the_graph(self):
        # draft + critique always run; refine and the loop back to critique run up to max_rounds times.
        assert calls_per_run(build_graph(max_rounds=2).compile()) == (2, 7)
        assert calls_per_run(dspy.Predict("a -> b")) == (1, 1)

    def test_gepa_estimate_uses_gepa_auto_budget(self):
        program = build_graph().compile()
        est = estimate_cost(program, "gepa", "light", n_train=6, n_dev=6)
        expected = dspy.GEPA.auto_budget(None, 3, 6, 6)
        assert est.program_runs == {"devset before/after": 12, "metric calls": expected}
        heavy = estimate_cost(program, "gepa", "heavy", n_train=6, n_dev=6)
        assert heavy.calls > est.calls

    def test_estimate_brackets_the_measured_spend(self):
        lm = make_lm()
        res = optimize("self_refine", method="mipro", trainset=TRAIN, devset=DEV, lm=lm)
        assert 0 < lm.calls <= res.estimate.calls_max

    def test_presets_scale_the_estimate(self):
        program = build_graph().compile()
        calls = [estimate_cost(program, "mipro", p, 20, 5).calls for p in ("light", "medium", "heavy")]
        assert calls == sorted(calls) and calls[0] < calls[2]


class TestErrors:
    def test_unknown_method(self):
        with pytest.raises(ValueError, match="Input should be 'bootstrap', 'mipro' or 'gepa'"):
            OptimizeConfig(method="random")

    def test_empty_trainset(self):
        with pytest.raises(ConfigError, match="The trainset is empty"):
            optimize("self_refine", trainset=[], lm=make_lm())

    def test_rows_without_program_inputs(self):
        with pytest.raises(ConfigError, match=r"row 1 has fields \['persona'\] but none of the program's inputs"):
            optimize("self_refine", trainset=[{"persona": "x"}], lm=make_lm())

    def test_mipro_needs_two_examples(self):
        with pytest.raises(ConfigError, match="MIPROv2 needs at least 2 training examples"):
            optimize("self_refine", method="mipro", trainset=TRAIN[:1], lm=make_lm())

    def test_no_lm(self):
        with dspy.context(lm=None), pytest.raises(ConfigError, match="No LM: pass --lm MODEL"):
            optimize("self_refine", trainset=TRAIN)

    def test_bad_jsonl(self, tmp_path):
        p = tmp_path / "t.jsonl"
        p.write_text('{"task": "a"}\nnot json\n')
        with pytest.raises(ConfigError, match=r"t.jsonl:2: not valid JSON"):
            load_examples(p, ["task"])
        with pytest.raises(ConfigError, match="does not exist"):
            load_examples(tmp_path / "missing.jsonl", ["task"])

    def test_jsonl_rows_become_examples_with_graph_inputs(self, tmp_path):
        p = tmp_path / "t.jsonl"
        p.write_text("# comment\n" + "\n".join(json.dumps(r) for r in TRAIN[:2]) + "\n\n")
        examples = load_examples(p, ["task"])
        assert len(examples) == 2 and set(examples[0].inputs().keys()) == {"task"}
        assert set(examples[0].labels().keys()) == {"output"}

    def test_load_optimized_errors(self, tmp_path):
        with pytest.raises(ConfigError, match="holds no optimized program"):
            load_optimized(tmp_path)
        program = build_graph().compile()
        program.save(str(tmp_path / "program.json"))
        with pytest.raises(ConfigError, match="records no program spec"):
            load_optimized(tmp_path)
        assert load_optimized(tmp_path, program="self_refine").nodes["draft"] is not None

    def test_program_objects_are_not_modified(self):
        program = build_graph().compile()
        optimize(
            program, method="gepa", trainset=TRAIN, devset=DEV, lm=make_lm(), optimizer_kwargs={"max_metric_calls": 30}
        )
        assert program.nodes["draft"].signature.instructions != NEW_INSTRUCTION

    def test_no_predictors(self):
        from refine.graph import ProgramGraph

        g = ProgramGraph("fn_only", inputs=["task"])
        g.add_node("echo", lambda task: task, inputs=["task"], outputs=["out"])
        with pytest.raises(ConfigError, match="has no DSPy predictors"):
            optimize(g, trainset=TRAIN, lm=make_lm())


class TestAgentRefine:
    def test_agentrefine_pipeline_is_optimized_and_runs_in_synth(self, tmp_path):
        from refine.synth import load_program
        from tests.test_synth_support import make_lm as teacher_lm

        personas = [{"persona": f"persona number {i}"} for i in range(6)]
        res = optimize(
            "agentrefine", method="bootstrap", trainset=personas[:4], devset=personas[4:], lm=teacher_lm(), out=tmp_path
        )
        assert res.status == "completed" and res.score_before is not None
        assert json.loads((tmp_path / "report.json").read_text())["metric"] == "verdict_metric"
        changed = {c.name for c in res.changes if c.changed}
        assert changed == {"nodes['generate_script']", "nodes['generate_trajectory']"}  # demos on both LM stages
        program = load_program(str(tmp_path))  # what `refine synth --program DIR` does
        assert program.nodes["generate_script"].demos
        with dspy.context(lm=teacher_lm()):
            assert program(persona="a tea lover", seed=0).trajectory is not None


class TestSettings:
    def test_invalid_override_is_a_config_error(self):
        with pytest.raises(ConfigError, match=r"Invalid optimize settings: method: Input should be 'bootstrap'"):
            optimize("self_refine", method="random", trainset=TRAIN, lm=make_lm())

    def test_mlflow_requested_but_missing(self):
        import importlib.util

        if importlib.util.find_spec("mlflow") is not None:
            pytest.skip("mlflow is installed")
        with pytest.raises(ConfigError, match=r"--mlflow needs MLflow: pip install 'dspy-refine\[mlflow\]'"):
            optimize("self_refine", trainset=TRAIN, lm=make_lm(), mlflow=True)

    def test_mlflow_absent_is_skipped_by_default(self):
        res = optimize("self_refine", trainset=TRAIN, lm=make_lm(), max_calls=12)
        assert res.score_before == pytest.approx(0.5)

    def test_rows_may_set_fields_with_defaults(self):
        from refine.envs.base import ToyEnv
        from refine.programs.interactive import build_graph as interactive_graph

        # The interactive program has no required inputs; `seed` (env mode) or `script` (DM mode) have defaults.
        res = optimize(interactive_graph(ToyEnv), trainset=[{"seed": 1}, {"seed": 2}], lm=make_lm(), dry_run=True)
        assert res.status == "dry_run"
        with pytest.raises(ConfigError, match=r"none of the program's inputs \['seed', 'script'"):
            optimize(interactive_graph(ToyEnv), trainset=[{"persona": "x"}], lm=make_lm(), dry_run=True)
