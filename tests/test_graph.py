"""Tests of `refine.graph`: validation messages, execution semantics, DSPy integration, rendering, thread safety."""

from __future__ import annotations

import copy
import json
import threading

import dspy
import pytest
from dspy.utils import DummyLM

from refine.errors import GraphValidationError
from refine.graph import GraphEvent, GraphModule, GraphRunError, ProgramGraph, program_hash


def _qa_graph() -> ProgramGraph:
    g = ProgramGraph("qa", inputs=["question"])
    g.add_node("answer", dspy.Predict("question -> answer"))
    g.add_node("check", dspy.ChainOfThought("answer -> verdict"))
    g.add_node("shout", lambda verdict: verdict.upper(), outputs=["loud"])
    g.add_edge("answer", "check")
    g.add_edge("check", "shout")
    return g


def _counter_graph(bound: int, stop_at: int | None = None) -> ProgramGraph:
    """act -> check -> (retry, bounded) act; counts how often `act` ran."""
    g = ProgramGraph("loop", inputs=["start"], defaults={"log": []})

    def act(start: int, log: list) -> dict:
        log.append(start + len(log))
        return {"log": log, "n": len(log)}

    def check(n: int) -> dict:
        return {"again": stop_at is None or n < stop_at}

    g.add_node("act", act, outputs=["log", "n"])
    g.add_node("check", check, outputs=["again"])
    g.add_edge("act", "check")
    g.add_edge("check", "act", condition="again", max_iters=bound)
    return g


class TestNamedPredictors:
    def test_lists_every_module_nodes_predictors_and_no_functions(self):
        prog = _qa_graph().compile()
        names = [n for n, _ in prog.named_predictors()]
        assert names == ["nodes['answer']", "nodes['check'].predict"]

    def test_predictors_are_the_nodes_modules(self):
        g = _qa_graph()
        prog = g.compile()
        assert dict(prog.named_predictors())["nodes['answer']"] is g.get_node("answer")


class TestSaveLoad:
    def test_state_round_trip_restores_instructions_and_demos(self, tmp_path):
        prog = _qa_graph().compile()
        pred = dict(prog.named_predictors())["nodes['answer']"]
        pred.signature = pred.signature.with_instructions("Answer tersely.")
        pred.demos = [dspy.Example(question="1+1?", answer="2")]
        prog.save(str(tmp_path / "prog.json"))

        fresh = _qa_graph().compile()
        assert dict(fresh.named_predictors())["nodes['answer']"].demos == []
        fresh.load(str(tmp_path / "prog.json"))
        loaded = dict(fresh.named_predictors())["nodes['answer']"]
        assert loaded.signature.instructions == "Answer tersely."
        assert [dict(d) for d in loaded.demos] == [{"question": "1+1?", "answer": "2"}]
        assert program_hash(fresh) == program_hash(prog)

    def test_whole_program_pickle_round_trip(self, tmp_path):
        # Regression: an unused threading.Lock attribute made save(save_program=True) fail ("cannot pickle lock").
        prog = _qa_graph().compile()
        prog.save(str(tmp_path / "whole"), save_program=True)
        loaded = dspy.load(str(tmp_path / "whole"), allow_pickle=True)
        assert isinstance(loaded, GraphModule)
        lm = DummyLM([{"answer": "a"}, {"reasoning": "r", "verdict": "ok"}])
        with dspy.context(lm=lm):
            assert loaded(question="q").loud == "OK"


class TestOptimizerCompiles:
    def test_bootstrap_few_shot_attaches_demos_to_graph_predictors(self):
        g = ProgramGraph("qa", inputs=["question"])
        g.add_node("answer", dspy.Predict("question -> answer"))
        g.add_node("polish", dspy.Predict("answer -> final"))
        g.add_edge("answer", "polish")
        prog = g.compile()
        trainset = [dspy.Example(question=f"q{i}", final=f"F{i}").with_inputs("question") for i in range(3)]
        lm = DummyLM({f"q{i}": {"answer": f"a{i}"} for i in range(3)} | {f"a{i}": {"final": f"F{i}"} for i in range(3)})

        def metric(gold, pred, trace=None):
            return gold.final == pred.final

        with dspy.context(lm=lm):
            compiled = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=0).compile(
                prog, trainset=trainset
            )
        assert isinstance(compiled, GraphModule)
        demos = {n: p.demos for n, p in compiled.named_predictors()}
        assert [d["answer"] for d in demos["nodes['answer']"]] == ["a0", "a1"]
        assert [d["final"] for d in demos["nodes['polish']"]] == ["F0", "F1"]
        # the student was copied, not mutated
        assert all(p.demos == [] for _, p in prog.named_predictors())


class TestValidate:
    def test_missing_input_names_node_and_fix(self):
        g = ProgramGraph("g", inputs=["question"])
        g.add_node("answer", dspy.Predict("question, context -> answer"))
        with pytest.raises(
            GraphValidationError,
            match=r"Node 'answer' in graph 'g' needs input 'context', which no upstream node or graph input "
            r"produces\. Add it to the graph inputs",
        ):
            g.validate()

    def test_missing_input_produced_by_non_upstream_node(self):
        g = ProgramGraph("g", inputs=["question"])
        g.add_node("a", dspy.Predict("question -> answer"))
        g.add_node("b", dspy.Predict("question -> context"))
        g.add_node("c", dspy.Predict("context -> out"))
        g.add_edge("a", "b")
        g.add_edge("a", "c")
        with pytest.raises(GraphValidationError, match=r"Nodes \['b'\] produce it but are not upstream"):
            g.validate()

    def test_cycle_without_bound(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: x, outputs=["x"])
        g.add_node("b", lambda x: x, outputs=["x"])
        g.add_edge("a", "b")
        g.add_edge("b", "a")
        g.entry = "a"
        with pytest.raises(
            GraphValidationError,
            match=r"Graph 'g' has a cycle without a bound: a -> b -> a\. Give one of its edges a bound, "
            r"e\.g\. graph\.add_edge\('b', 'a', condition=\.\.\., max_iters=4\)",
        ):
            g.validate()

    def test_unreachable_node(self):
        g = ProgramGraph("g", inputs=["x"], entry="a")
        g.add_node("a", lambda x: x, outputs=["y"])
        g.add_node("b", lambda x: x, outputs=["z"])
        with pytest.raises(
            GraphValidationError,
            match=r"Node 'b' in graph 'g' is unreachable from the entry node\(s\) \['a'\]\. "
            r"Connect it, e\.g\. graph\.add_edge\('a', 'b'\), or remove it\.",
        ):
            g.validate()

    def test_duplicate_name(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: x)
        with pytest.raises(
            GraphValidationError,
            match=r"Duplicate node name 'a' in graph 'g': node names must be unique\. Existing nodes: \['a'\]\. "
            r"Rename it, e\.g\. graph\.add_node\('a_2', \.\.\.\)\.",
        ):
            g.add_node("a", lambda x: x)

    def test_unknown_condition_field(self):
        # Regression: a typo in a string condition made the edge silently never fire.
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: {"ok": True}, outputs=["ok"])
        g.add_node("b", lambda x: x, outputs=["y"])
        g.add_edge("a", "b", condition="not okk")
        with pytest.raises(
            GraphValidationError,
            match=r"Edge 'a' -> 'b' in graph 'g': condition 'not okk' reads field 'okk', which neither 'a' nor "
            r"anything upstream of it sets\. Fields available there: \['ok', 'x'\]",
        ):
            g.validate()

    def test_unknown_mapping_source(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: x, outputs=["y"])
        g.add_node("b", lambda z: z, outputs=["w"])
        g.add_edge("a", "b", mapping={"z": "yy"})
        with pytest.raises(GraphValidationError, match=r"Edge 'a' -> 'b' in graph 'g' maps 'z' from field 'yy'"):
            g.validate()

    def test_other_construction_errors(self):
        g = ProgramGraph("g")
        with pytest.raises(GraphValidationError, match=r"Graph 'g' has no nodes"):
            g.validate()
        with pytest.raises(GraphValidationError, match=r"Node name 'a b' in graph 'g' is not a Python identifier"):
            g.add_node("a b", lambda: 1)
        g.add_node("a", lambda: 1)
        with pytest.raises(GraphValidationError, match=r"Edge 'a' -> 'zz' in graph 'g' names unknown node 'zz'"):
            g.add_edge("a", "zz")
        with pytest.raises(GraphValidationError, match=r"max_iters must be >= 1, got 0"):
            g.add_edge("a", "a", max_iters=0)

        class TwoStep(dspy.Module):
            def __init__(self):
                super().__init__()
                self.one = dspy.Predict("a -> b")
                self.two = dspy.Predict("b -> c")

        with pytest.raises(GraphValidationError, match=r"Node 'two': cannot infer inputs/outputs of TwoStep"):
            g.add_node("two", TwoStep())
        with pytest.raises(GraphValidationError, match=r"must be a dspy.Module or a callable, got int"):
            g.add_node("n", 3)  # type: ignore[arg-type]
        g.outputs = ("nope",)
        with pytest.raises(GraphValidationError, match=r"declares outputs \['nope'\] that no node produces"):
            g.validate()

    def test_compile_validates_before_any_call(self):
        g = ProgramGraph("g", inputs=["q"])
        g.add_node("a", dspy.Predict("missing -> answer"))
        with pytest.raises(GraphValidationError, match="needs input 'missing'"):
            g.compile()

    def test_loop_node_may_read_its_own_earlier_output(self):
        _counter_graph(bound=2).validate()


class TestMermaid:
    def test_exact_output(self):
        g = ProgramGraph("g", inputs=["question"])
        g.add_node("answer", dspy.Predict("question -> answer, ok"))
        g.add_node("fix", dspy.Predict("answer, feedback -> fixed, ok"))
        g.add_node("done", lambda answer: answer, outputs=["final"])
        g.add_edge("answer", "fix", condition="not ok", mapping={"feedback": "answer"})
        g.add_edge("fix", "fix", condition=lambda s: not s["ok"], max_iters=3)
        g.add_edge("answer", "done", condition="ok")
        assert g.to_mermaid() == (
            "flowchart TD\n"
            '    answer["answer<br/>Predict"]\n'
            '    fix["fix<br/>Predict"]\n'
            '    done("done")\n'
            "    answer -->|not ok / feedback=answer| fix\n"
            "    fix -.->|#lt;lambda#gt; / max 3| fix\n"
            "    answer -->|ok| done\n"
        )

    def test_end_node_is_renamed(self):
        # Regression: a node named "end" is a Mermaid keyword and broke the whole chart.
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("start", lambda x: x, outputs=["y"])
        g.add_node("end", lambda y: y, outputs=["z"])
        g.add_edge("start", "end")
        assert g.to_mermaid() == 'flowchart TD\n    start("start")\n    end_("end")\n    start --> end_\n'


class TestExecution:
    def test_bounded_loop_stops_at_bound(self):
        prog = _counter_graph(bound=3).compile()
        out = prog(start=10)
        assert out.log == [10, 11, 12, 13]  # 1 first run + 3 bounded re-entries
        assert [e.node for e in out.graph_trace] == ["act", "check"] * 4

    def test_loop_stops_when_condition_fails(self):
        out = _counter_graph(bound=5, stop_at=2).compile()(start=0)
        assert out.n == 2

    def test_defaults_are_copied_per_run(self):
        prog = _counter_graph(bound=1).compile()
        assert prog(start=0).log == [0, 1]
        assert prog(start=0).log == [0, 1]  # the default list was not shared between runs

    @pytest.mark.parametrize(
        ("condition", "flag", "expected"),
        [
            ("flag", True, "yes"),
            ("flag", False, None),
            ("not flag", False, "yes"),
            ("not flag", True, None),
            (lambda s: s["flag"] is True, True, "yes"),
            (lambda s: s["flag"] is True, False, None),
        ],
    )
    def test_conditions(self, condition, flag, expected):
        g = ProgramGraph("g", inputs=["flag"], outputs=["out"])
        g.add_node("a", lambda flag: flag, outputs=["flag2"])
        g.add_node("b", lambda flag: "yes", outputs=["out"])
        g.add_edge("a", "b", condition=condition)
        out = g.compile()(flag=flag)
        assert out.out == expected
        assert [e.node for e in out.graph_trace] == (["a", "b"] if expected else ["a"])

    def test_mapping_renames_fields(self):
        g = ProgramGraph("g", inputs=["text"])
        g.add_node("draft", lambda text: text + "!", outputs=["draft"])
        g.add_node("review", lambda document: f"<{document}>", outputs=["review"])
        g.add_edge("draft", "review", mapping={"document": "draft"})
        out = g.compile()(text="hi")
        assert out.review == "<hi!>"
        assert out.graph_trace[1].inputs == {"document": "hi!"}

    def test_join_runs_after_all_pending_parents(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("root", lambda x: x, outputs=["r"])
        g.add_node("left", lambda r: r + "L", outputs=["left"])
        g.add_node("mid", lambda r: r + "M", outputs=["mid"])
        g.add_node("right", lambda mid: mid + "R", outputs=["right"])
        g.add_node("join", lambda left, right: left + right, outputs=["joined"])
        g.add_edge("root", "left")
        g.add_edge("root", "mid")
        g.add_edge("mid", "right")
        g.add_edge("left", "join")
        g.add_edge("right", "join")
        out = g.compile()(x="x")
        assert out.joined == "xLxMR"
        assert [e.node for e in out.graph_trace] == ["root", "left", "mid", "right", "join"]

    def test_catch_errors_records_error_and_continues(self):
        def boom(x):
            raise ValueError("bad input")

        g = ProgramGraph("g", inputs=["x"])
        g.add_node("work", boom, outputs=["y"], catch_errors=True)
        g.add_node("recover", lambda error: f"saw {error}", outputs=["note"])
        g.add_edge("work", "recover", condition="error")
        out = g.compile()(x=1)
        assert out.error == "work: ValueError: bad input"
        assert out.y is None
        assert out.note == "saw work: ValueError: bad input"
        assert out.graph_trace[0].error == "work: ValueError: bad input"

    def test_catch_errors_clears_error_after_success(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("work", lambda x: x, outputs=["y"], catch_errors=True)
        out = g.compile()(x=1)
        assert out.error is None
        assert out.y == 1

    def test_uncaught_error_raises_graph_run_error_with_events(self):
        def boom(y):
            raise KeyError("k")

        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: x, outputs=["y"])
        g.add_node("b", boom, outputs=["z"])
        g.add_edge("a", "b")
        with pytest.raises(GraphRunError, match=r"Node 'b' in graph 'g' failed: KeyError: 'k'") as info:
            g.compile()(x=1)
        assert info.value.node == "b"
        assert [(e.node, e.error is None) for e in info.value.events] == [("a", True), ("b", False)]

    def test_missing_graph_input(self):
        g = ProgramGraph("g", inputs=["x", "y"])
        g.add_node("a", lambda x, y: x, outputs=["z"])
        with pytest.raises(GraphRunError, match=r"Graph 'g' called without inputs \['y'\]; it needs \['x', 'y'\]"):
            g.compile()(x=1)

    def test_function_node_missing_declared_output(self):
        g = ProgramGraph("g", inputs=["x"])
        g.add_node("a", lambda x: {"p": 1}, outputs=["p", "q"])
        with pytest.raises(GraphRunError, match=r"Function node 'a' returned keys \['p'\] but declared outputs"):
            g.compile()(x=1)
        g2 = ProgramGraph("g2", inputs=["x"])
        g2.add_node("a", lambda x: 5, outputs=["p", "q"])
        with pytest.raises(GraphRunError, match=r"Function node 'a' returned a int; with several outputs"):
            g2.compile()(x=1)

    def test_module_node_missing_declared_output(self):
        # Regression: a module returning a prediction without a declared output silently produced None.
        class Partial(dspy.Module):
            def forward(self, x):
                return dspy.Prediction(y=x)

        g = ProgramGraph("g", inputs=["x"])
        g.add_node("m", Partial(), inputs=["x"], outputs=["y", "z"])
        with pytest.raises(GraphRunError, match=r"Module node 'm' returned a Prediction without its declared outputs"):
            g.compile()(x=1)

    def test_function_node_may_return_prediction(self):
        g = ProgramGraph("g", inputs=["x"], outputs=["y"])
        g.add_node("a", lambda x: dspy.Prediction(y=x * 2, extra=0), outputs=["y"])
        assert g.compile()(x=2).toDict()["y"] == 4

    def test_module_nodes_call_the_lm(self):
        lm = DummyLM([{"answer": "paris"}, {"reasoning": "fine", "verdict": "ok"}])
        with dspy.context(lm=lm):
            out = _qa_graph().compile()(question="capital of France?")
        assert (out.answer, out.verdict, out.loud) == ("paris", "ok", "OK")
        assert all(isinstance(e, GraphEvent) for e in out.graph_trace)
        assert [e.node for e in out.graph_trace] == ["answer", "check", "shout"]

    def test_nested_graph_node(self):
        inner = ProgramGraph("inner", inputs=["a"], outputs=["b"])
        inner.add_node("double", lambda a: a * 2, outputs=["b"])
        outer = ProgramGraph("outer", inputs=["a"])
        outer.add_node("sub", inner.compile())
        outer.add_node("inc", lambda b: b + 1, outputs=["c"])
        outer.add_edge("sub", "inc")
        assert outer.get_node_inputs("sub") == ("a",)
        assert outer.compile()(a=3).c == 7

    def test_deepcopy_copies_modules_and_shares_functions(self):
        prog = _qa_graph().compile()
        clone = copy.deepcopy(prog)
        assert clone.nodes["answer"] is not prog.nodes["answer"]
        assert clone._functions is prog._functions
        assert program_hash(clone) == program_hash(prog)

    def test_program_hash_tracks_instructions_and_demos(self):
        prog = _qa_graph().compile()
        h0 = program_hash(prog)
        pred = prog.nodes["answer"]
        pred.demos = [dspy.Example(question="q", answer="a")]
        h1 = program_hash(prog)
        pred.signature = pred.signature.with_instructions("new")
        h2 = program_hash(prog)
        assert len({h0, h1, h2}) == 3
        assert program_hash(prog, extra={"seed": 1}) != h2

    def test_describe_is_json(self):
        desc = _qa_graph().describe()
        assert json.loads(json.dumps(desc))["edges"][0] == {
            "src": "answer",
            "dst": "check",
            "condition": "",
            "mapping": {},
            "max_iters": None,
        }


class TestThreadSafety:
    N = 8

    def _graph(self) -> GraphModule:
        g = ProgramGraph("qa", inputs=["question"])
        g.add_node("answer", dspy.Predict("question -> answer"))
        g.add_node("judge", dspy.Predict("answer -> verdict"))
        g.add_edge("answer", "judge")
        return g.compile()

    def _lm(self) -> DummyLM:
        answers = {f"alpha-{i}": {"answer": f"beta-{i}"} for i in range(self.N)}
        answers |= {f"beta-{i}": {"verdict": f"gamma-{i}"} for i in range(self.N)}
        return DummyLM(answers)

    def _check(self, results, outer_trace):
        assert len(results) == self.N
        for i, pred in enumerate(results):
            assert pred.verdict == f"gamma-{i}"
            assert [inputs for _, inputs, _ in pred.trace] == [{"question": f"alpha-{i}"}, {"answer": f"beta-{i}"}]
        # the outer trace got every call of every run (optimizers bootstrap from it)
        assert len(outer_trace) == 2 * self.N
        assert sorted(out.get("verdict", "") for _, _, out in outer_trace)[-self.N :] == sorted(
            f"gamma-{i}" for i in range(self.N)
        )

    def test_batch(self):
        prog = self._graph()
        examples = [dspy.Example(question=f"alpha-{i}").with_inputs("question") for i in range(self.N)]
        outer: list = []
        with dspy.context(lm=self._lm(), trace=outer):
            results = prog.batch(examples, num_threads=self.N, disable_progress_bar=True)
        self._check(results, outer)

    def test_parallel(self):
        prog = self._graph()
        outer: list = []
        barrier = threading.Barrier(self.N, timeout=10)

        def wait(question: str) -> str:
            barrier.wait()  # all 8 runs are inside the graph at once
            return question

        g = ProgramGraph("qa", inputs=["question"])
        g.add_node("sync", wait, outputs=["question"])
        g.add_node("answer", prog.nodes["answer"])
        g.add_node("judge", prog.nodes["judge"])
        g.add_edge("sync", "answer")
        g.add_edge("answer", "judge")
        prog = g.compile()
        pairs = [(prog, {"question": f"alpha-{i}"}) for i in range(self.N)]
        with dspy.context(lm=self._lm(), trace=outer):
            results = dspy.Parallel(num_threads=self.N, disable_progress_bar=True)(pairs)
        self._check(results, outer)
