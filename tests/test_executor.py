"""Tests of refine.executor on the local thread pool: resume, dedupe, failures, LM recipes, options.

The work functions here are also used by tests/test_ray_executor.py (Ray pickles them by reference, so they live
at module level in an importable test module).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import dspy
import pytest

from refine.errors import ConfigError, RunStoreError
from refine.executor import Emit, ExecutorConfig, ItemOutcome, WorkerLM, run_items
from refine.store import RunStore
from refine.testing import ScriptedLM


# ---------------------------------------------------------------------------------------------------------- helpers
def fake_lm(spec: str, **kwargs: Any) -> ScriptedLM:
    """A deterministic fake teacher built from a spec string (what a Ray worker does with WorkerLM)."""

    def respond(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any]:
        digest = hashlib.sha256(f"{spec}|{inputs.get('persona')}|{inputs.get('seed')}".encode()).hexdigest()
        return {"trajectory": f"traj-{digest[:10]}", "score": int(digest[:2], 16) % 10}

    return ScriptedLM(respond, model=f"fake/{spec}", **kwargs)


class Synthesize(dspy.Signature):
    """Write a trajectory for a persona."""

    persona: str = dspy.InputField()
    seed: int = dspy.InputField()
    trajectory: str = dspy.OutputField()
    score: int = dspy.OutputField()


def synth_like_work(item: dict[str, Any]) -> list[Emit]:
    """Like synthesis: up to 2 attempts, each recorded; accepted (keyed by the item) when an attempt scores >= 4."""
    out = []
    predict = dspy.Predict(Synthesize)
    for attempt in range(2):
        pred = predict(persona=item["persona"], seed=item["seed"] * 10 + attempt)
        rec = {"item": item["key"], "attempt": attempt, "trajectory": pred.trajectory, "score": pred.score}
        rec["pid"] = os.getpid()
        if pred.score >= 4:
            out.append(Emit("accepted", item["key"], rec))
            return out
        out.append(Emit("rejected", f"{item['key']}/a{attempt}", rec))
    return out


def make_items(n: int) -> list[dict[str, Any]]:
    return [{"key": f"p{i:03d}", "persona": f"persona number {i}", "seed": i} for i in range(n)]


def raw_keys(run: Path) -> Counter[str]:
    """Every key of every complete line of every JSONL file (shards included), counted: the on-disk truth."""
    keys: Counter[str] = Counter()
    for p in run.glob("*.jsonl"):
        for line in p.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                keys[json.loads(line)["key"]] += 1
    return keys


def accepted_set(run: Path) -> dict[str, str]:
    store = RunStore.open_existing(run)
    return {r["key"]: r["trajectory"] for r in store.records("accepted")}


# ---------------------------------------------------------------------------------------------------------- tests
class TestLocal:
    def test_runs_every_item_once_and_resumes(self, tmp_path):
        run = tmp_path / "run"
        items = make_items(12)
        with RunStore(run, config={"n": 12}) as store:
            s = run_items(items[:7], synth_like_work, store=store, lm=WorkerLM("t", factory=fake_lm), workers=4)
        assert (s.total, s.done, s.skipped, s.failed, s.pending) == (7, 7, 0, 0, 0)
        first = accepted_set(run)
        with RunStore(run, config={"n": 12}, resume=True) as store:
            s2 = run_items(items, synth_like_work, store=store, lm=WorkerLM("t", factory=fake_lm), workers=3)
        assert (s2.total, s2.done, s2.skipped, s2.pending) == (12, 5, 7, 0)
        final = accepted_set(run)
        assert {k: v for k, v in final.items() if k in first} == first
        assert all(n == 1 for n in raw_keys(run).values())
        # Every item is done: accepted under its key, or marked done in items.jsonl after two rejections.
        done = set(final) | {r["key"] for r in RunStore.open_existing(run).records("items")}
        assert done == {it["key"] for it in items}
        assert s.written.get("accepted", 0) + s.written.get("items", 0) == 7

    def test_thread_count_does_not_change_results(self, tmp_path):
        items = make_items(10)
        sets = []
        for workers in (1, 5):
            run = tmp_path / f"run{workers}"
            run_items(items, synth_like_work, store=run, lm=WorkerLM("t", factory=fake_lm), workers=workers)
            sets.append(accepted_set(run))
        assert sets[0] == sets[1] and sets[0]

    def test_half_written_item_is_redone_without_duplicates(self, tmp_path):
        run = tmp_path / "run"
        items = make_items(6)
        with RunStore(run, config={}) as store:
            # A crash after an item's first records but before its own key: the item is not done yet.
            store.append("rejected", {"note": "from the crashed run"}, key="p002/a0")
        s = run_items(items, synth_like_work, store=run, lm=WorkerLM("t", factory=fake_lm))
        assert s.done == 6 and s.pending == 0
        keys = raw_keys(run)
        assert all(n == 1 for n in keys.values()), keys
        # the pre-existing record was kept, not rewritten
        assert any(r.get("note") for r in RunStore.open_existing(run).records("rejected"))

    def test_failed_items_are_recorded_and_retried_on_resume(self, tmp_path):
        run = tmp_path / "run"
        flaky = {"p001", "p004"}

        def work(item):
            if item["key"] in flaky:
                raise ValueError(f"LM produced garbage for {item['key']}")
            return [Emit("accepted", item["key"], {"ok": True})]

        s = run_items(make_items(6), work, store=run, workers=2)
        assert (s.done, s.failed, s.pending) == (4, 2, 2)
        errors = list(RunStore.open_existing(run).records("errors"))
        assert sorted(e["item"] for e in errors) == ["p001", "p004"]
        assert all(e["error"].startswith("ValueError: LM produced garbage") for e in errors)
        flaky.clear()
        s2 = run_items(make_items(6), work, store=run, workers=2)
        assert (s2.done, s2.skipped, s2.failed, s2.pending) == (2, 4, 0, 0)

    def test_progress_reports_each_item_in_the_calling_thread(self, tmp_path):
        seen: list[ItemOutcome] = []
        caller = threading.get_ident()
        threads = set()

        def progress(outcome):
            threads.add(threading.get_ident())
            seen.append(outcome)

        run_items(
            make_items(5),
            lambda it: [Emit("accepted", it["key"], {})],
            store=tmp_path / "r",
            workers=3,
            progress=progress,
        )
        assert sorted(o.key for o in seen) == [f"p{i:03d}" for i in range(5)]
        assert {o.status for o in seen} == {"done"} and threads == {caller}

    def test_outcome_fields_carry_record_values_to_progress(self, tmp_path):
        seen = {}
        run_items(
            make_items(3),
            lambda it: [Emit("episodes", it["key"], {"success": it["seed"] == 1, "steps": 3})],
            store=tmp_path / "r",
            outcome_fields=("success", "absent"),
            progress=lambda o: seen.update({o.key: o.info}),
        )
        assert seen == {"p000": {"success": False}, "p001": {"success": True}, "p002": {"success": False}}

    def test_callers_dspy_context_reaches_worker_threads(self, tmp_path):
        lm = fake_lm("ctx")
        with dspy.context(lm=lm):
            s = run_items(make_items(4), synth_like_work, store=tmp_path / "r", workers=4)
        assert s.done == 4 and lm.calls >= 4

    def test_lm_recipe_is_built_once_per_process(self, tmp_path):
        built = []

        def factory(spec):
            built.append(spec)
            return fake_lm(spec)

        recipe = WorkerLM("once", factory=factory)
        run_items(make_items(6), synth_like_work, store=tmp_path / "r", lm=recipe, workers=3)
        assert built == ["once"]

    def test_work_output_errors_fail_the_item_with_a_reason(self, tmp_path):
        outputs = {
            "p000": None,
            "p001": ["not an emit"],
            "p002": [("bad kind!", "k", {})],
            "p003": [("ok", "", {})],
            "p004": [("ok", "p004", {}), ("other", "p004", {})],
        }
        s = run_items(make_items(5), lambda it: outputs[it["key"]], store=tmp_path / "r")
        assert s.failed == 5
        reasons = {e["item"]: e["error"] for e in RunStore.open_existing(tmp_path / "r").records("errors")}
        assert "returned None" in reasons["p000"]
        assert "yielded str" in reasons["p001"]
        assert "must be an identifier" in reasons["p002"]
        assert "non-empty string" in reasons["p003"]
        assert "two records of item 'p004' share the key 'p004'" in reasons["p004"]

    def test_store_errors_stop_the_run(self, tmp_path):
        def work(item):
            raise RunStoreError("disk full")

        with pytest.raises(RunStoreError, match="disk full"):
            run_items(make_items(2), work, store=tmp_path / "r")

    def test_duplicate_item_keys_are_refused(self, tmp_path):
        with pytest.raises(ConfigError, match="Two items share the key 'p000'"):
            run_items(make_items(2) + make_items(1), synth_like_work, store=tmp_path / "r")

    def test_key_by_field_name_and_callable(self, tmp_path):
        items = [{"id": "a"}, {"id": "b"}]
        s = run_items(items, lambda it: [Emit("x", it["id"], {})], store=tmp_path / "r1", key="id")
        assert s.done == 2
        s = run_items(items, lambda it: [], store=tmp_path / "r2", key=lambda it: it["id"].upper())
        assert {r["key"] for r in RunStore.open_existing(tmp_path / "r2").records("items")} == {"A", "B"}


class TestConfig:
    def test_defaults_and_chunking(self):
        cfg = ExecutorConfig()
        assert (cfg.executor, cfg.workers) == ("local", 4)
        assert ExecutorConfig(workers=2).chunk_size_for(10) == 2
        assert ExecutorConfig(workers=2).chunk_size_for(10_000) == 64
        assert ExecutorConfig(workers=2, chunk_size=5).chunk_size_for(10_000) == 5
        # whole rounds of a task's threads
        assert ExecutorConfig(workers=2, threads_per_worker=16).chunk_size_for(320) == 48
        assert ExecutorConfig(workers=2, threads_per_worker=16).chunk_size_for(10) == 16

    def test_options_override_a_config(self):
        cfg = ExecutorConfig.from_options(ExecutorConfig(executor="ray", workers=2), workers=6, ray_address=None)
        assert (cfg.executor, cfg.workers) == ("ray", 6)

    @pytest.mark.parametrize(
        ("executor", "options", "match"),
        [
            ("dask", {}, r"executor: Input should be 'local' or 'ray'"),
            ("local", {"workers": 0}, r"workers: Input should be greater than or equal to 1"),
            ("local", {"ray_address": "auto"}, r"ray_address \(--ray-address\) only applies with executor='ray'"),
        ],
    )
    def test_bad_options_raise_config_error(self, executor, options, match):
        with pytest.raises(ConfigError, match=match):
            ExecutorConfig.from_options(executor, **options)

    def test_ray_refuses_lm_objects(self, tmp_path):
        with pytest.raises(ConfigError, match=r"pass lm=WorkerLM\('<model spec>'\)"):
            run_items(make_items(1), synth_like_work, store=tmp_path / "r", executor="ray", lm=fake_lm("x"))

    def test_missing_ray_says_how_to_install(self, tmp_path, monkeypatch):
        import builtins

        real_import = builtins.__import__

        def no_ray(name, *args, **kwargs):
            if name == "ray" or name.startswith("ray."):
                raise ImportError("No module named 'ray'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_ray)
        with pytest.raises(ConfigError, match=r"pip install 'dspy-refine\[ray\]'"):
            run_items(make_items(1), synth_like_work, store=tmp_path / "r", executor="ray")


class TestWorkerLM:
    def test_factory_by_import_path(self):
        lm = WorkerLM("spec-a", factory="tests.test_executor:fake_lm", cache=False)
        built = lm.get()
        assert isinstance(built, ScriptedLM) and built.model == "fake/spec-a"
        assert lm.get() is built

    @pytest.mark.parametrize(
        ("factory", "match"),
        [
            ("no_colon", r"must look like 'package.module:function'"),
            ("tests.nope_module:f", r"Cannot import the LM factory 'tests.nope_module:f'"),
            ("tests.test_executor:NOT_THERE", r"Cannot import the LM factory"),
            ("tests.test_executor:__doc__", r"is not callable"),
        ],
    )
    def test_bad_factories(self, factory, match):
        with pytest.raises(ConfigError, match=match):
            WorkerLM("x", factory=factory).get()

    def test_a_factory_that_fails_stops_the_run(self, tmp_path):
        from refine.errors import LMError

        def broken(spec):
            raise OSError("model file missing")

        with pytest.raises(LMError, match=r"Cannot build the LM 'm' with .*: model file missing"):
            run_items(make_items(3), synth_like_work, store=tmp_path / "r", lm=WorkerLM("m", factory=broken))
        assert not list((tmp_path / "r").glob("errors*.jsonl"))

    def test_empty_spec(self):
        with pytest.raises(ConfigError, match="non-empty model spec"):
            WorkerLM("")

    def test_a_model_string_becomes_a_worker_lm(self, tmp_path, monkeypatch):
        import refine.lm.resolve

        # A plain string goes through the one resolver (refine.lm.resolve_lm -> get_lm for model strings) in each
        # process; stand in for get_lm with the fake teacher.
        monkeypatch.setattr(refine.lm.resolve, "get_lm", fake_lm)
        s = run_items(make_items(3), synth_like_work, store=tmp_path / "r", lm="from-string")
        assert s.done == 3


class TestShardStore:
    """The Ray worker's store: other processes' keys are picked up incrementally, torn lines only once complete."""

    def test_refresh_sees_new_keys_from_other_writers(self, tmp_path):
        from refine.store import ShardStore

        run = tmp_path / "run"
        parent = RunStore(run, config={})
        parent.append("accepted", {}, key="before")
        shard = ShardStore(str(run), "w1")
        assert shard.has("before")
        other = RunStore(run, shard="w2")
        other.append("accepted", {}, key="later")
        assert not shard.has("later")
        shard.refresh()
        assert shard.has("later")
        # only the new bytes are read: offsets sit at each file's end
        assert shard._offsets == {p: p.stat().st_size for p in run.glob("*.jsonl")}
        assert not shard.append("accepted", {"again": True}, key="later")  # another shard's key is not rewritten
        for s in (shard, other, parent):
            s.close()

    def test_torn_line_is_read_once_complete(self, tmp_path):
        from refine.store import ShardStore

        run = tmp_path / "run"
        RunStore(run, config={}).close()
        shard = ShardStore(str(run), "w1")
        dead = run / "accepted.w9.jsonl"
        line = json.dumps({"key": "slow"}).encode() + b"\n"
        dead.write_bytes(line[:5])
        shard.refresh()
        assert not shard.has("slow") and shard._offsets[dead] == 0
        dead.write_bytes(line)
        shard.refresh()
        assert shard.has("slow")
        shard.close()

    def test_a_run_directory_missing_on_a_worker_node_is_an_error(self, tmp_path):
        from refine.store import ShardStore

        with pytest.raises(RunStoreError, match=r"is not visible on Ray node .*mounts at the same path"):
            ShardStore(str(tmp_path / "elsewhere"), "w1")
        assert not (tmp_path / "elsewhere").exists()

    def test_a_worker_reopens_a_run_directory_that_was_made_again(self, tmp_path, monkeypatch):
        import shutil
        import types

        import refine.executor.ray_runner as ex

        fake_ray = types.SimpleNamespace(
            get_runtime_context=lambda: types.SimpleNamespace(get_worker_id=lambda: "abcdef0123456789ffff")
        )
        monkeypatch.setitem(__import__("sys").modules, "ray", fake_ray)
        monkeypatch.setattr(ex, "_WORKER_STORES", {})
        run = tmp_path / "run"
        RunStore(run, config={}).close()
        first = ex._worker_store(str(run))
        assert ex._worker_store(str(run)) is first  # cached across tasks
        first.append("accepted", {}, key="old")
        assert not first.stale()
        shutil.rmtree(run)  # while the worker keeps its store open: its descriptors now point at unlinked files
        RunStore(run, config={}).close()
        assert first.stale()
        second = ex._worker_store(str(run))
        assert second is not first and not second.has("old")
        second.append("accepted", {}, key="new")
        assert [r["key"] for r in RunStore.open_existing(run).records("accepted")] == ["new"]
        second.close()


class TestEvalExecutorOptions:
    """`refine.eval.evaluate(executor=...)` refuses what cannot work on Ray before starting anything."""

    def test_ray_needs_a_run_directory_and_an_agent_factory(self, tmp_path):
        from refine.eval import EvalConfig, evaluate
        from tests.test_eval import scripted_agent, toy_factory

        cfg = EvalConfig(envs=["toy"], episodes=1)
        with pytest.raises(ConfigError, match=r"--executor ray writes episodes through a run directory; pass --out"):
            evaluate(scripted_agent, cfg, env_factory=toy_factory, executor="ray")
        with pytest.raises(ConfigError, match=r"pass the agent as a zero-argument factory"):
            evaluate(scripted_agent(), cfg, tmp_path / "r", env_factory=toy_factory, executor="ray")
        with pytest.raises(ConfigError, match=r"ray_address \(--ray-address\) only applies with executor='ray'"):
            evaluate(scripted_agent(), cfg, env_factory=toy_factory, ray_address="auto")
        assert not (tmp_path / "r").exists()
