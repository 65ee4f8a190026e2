"""The in-process engine: micro-batching (mocked generation) and real grammar decoding with a tiny random model."""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Literal

import dspy
import pydantic
import pytest

from refine.errors import LMError
from refine.lm import engine as engine_module
from refine.lm.adapter import GrammarChatAdapter
from refine.lm.engine import AsyncLocalEngine, LocalEngine
from refine.lm.resolve import get_lm


# ---------------------------------------------------------------------------------------------------------------------
# Batching logic with a fake model: what reaches one generate() call
# ---------------------------------------------------------------------------------------------------------------------
class _FakeTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict):
        return [1] * sum(len(m["content"]) for m in messages)


@pytest.fixture
def fake_engine(monkeypatch):
    """A LocalEngine factory whose generate() records its batches and echoes the prompt back."""
    fake = SimpleNamespace(
        source=SimpleNamespace(kind="fake", model="embedded"),
        tokenizer=_FakeTokenizer(),
        model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1000)),
        prefix_cache_entries=0,
        tokenizer_lock=threading.Lock(),
    )
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: fake)
    calls: list[list] = []
    lock = threading.Lock()

    def fake_generate(self, loaded, jobs, torch):
        from dspy.lm15 import Message, Response, Usage

        with lock:
            calls.append(jobs)
        if any(job.request.messages[0].text == "boom" for job in jobs):
            raise RuntimeError("kaboom")
        time.sleep(0.05)
        return [
            Response(
                id=None,
                model=job.request.model,
                message=Message.assistant("echo:" + job.request.messages[0].text),
                finish_reason="stop",
                usage=Usage(input_tokens=len(job.prompt_ids), output_tokens=1),
            )
            for job in jobs
        ]

    monkeypatch.setattr(LocalEngine, "_generate", fake_generate)
    engines = []

    def make(**kw):
        engine = LocalEngine(**kw)
        engines.append(engine)
        return engine

    yield make, calls
    for engine in engines:
        engine.close()


def _req(text, temperature=None, max_tokens=None, tools=()):
    from dspy.lm15 import Config, Message, Request

    return Request(
        model="embedded",
        messages=(Message.user(text),),
        config=Config(temperature=temperature, max_tokens=max_tokens),
        tools=tools,
    )


class TestMicroBatching:
    def test_concurrent_calls_share_generate_calls(self, fake_engine):
        make, calls = fake_engine
        engine = make(max_batch=16, batch_wait_ms=30)
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda i: engine.complete(_req(f"q{i}")), range(12)))
        assert [r.text for r in responses] == [f"echo:q{i}" for i in range(12)], "each caller gets its own answer"
        sizes = [len(jobs) for jobs in calls]
        assert sum(sizes) == 12
        assert max(sizes) > 1, f"calls were not batched: {sizes}"

    def test_max_batch_caps_and_one_disables_batching(self, fake_engine):
        make, calls = fake_engine
        engine = make(max_batch=4, batch_wait_ms=30)
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda i: engine.complete(_req(f"q{i}")), range(10)))
        assert max(len(jobs) for jobs in calls) <= 4
        calls.clear()
        single = make(max_batch=1, batch_wait_ms=30)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: single.complete(_req(f"q{i}")), range(6)))
        assert [len(jobs) for jobs in calls] == [1] * 6

    def test_groups_by_sampling_settings(self, fake_engine):
        make, calls = fake_engine
        engine = make(max_batch=16, batch_wait_ms=50)
        temps = [0.0, 0.7, None, 0.7, 1.0, 0.0]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda t: engine.complete(_req("q", temperature=t)), temps))
        for jobs in calls:
            assert len({job.sample_key for job in jobs}) == 1, "one generate() mixes sampling settings"
        greedy = [job for jobs in calls for job in jobs if not job.sample_key[0]]
        assert len(greedy) == 3, "temperature None and 0.0 are both greedy"

    def test_generation_error_reaches_every_caller_and_worker_survives(self, fake_engine):
        make, _ = fake_engine
        engine = make(max_batch=8, batch_wait_ms=50)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(engine.complete, _req("boom")), pool.submit(engine.complete, _req("boom"))]
            for future in futures:
                with pytest.raises(LMError, match="In-process generation failed: kaboom"):
                    future.result()
        assert engine.complete(_req("fine")).text == "echo:fine"

    def test_request_validation(self, fake_engine):
        from dspy.lm15 import FunctionTool

        make, calls = fake_engine
        engine = make()
        tool = FunctionTool(name="t", description="d", parameters={"type": "object", "properties": {}})
        with pytest.raises(LMError, match="does no native function calling"):
            engine.complete(_req("q", tools=(tool,)))
        with pytest.raises(LMError, match=r"exceeds the context of embedded \(1000 tokens\)"):
            engine.complete(_req("x" * 900, max_tokens=200))
        assert calls == []

    def test_bad_settings(self):
        with pytest.raises(LMError, match="max_batch must be >= 1"):
            LocalEngine(max_batch=0)
        with pytest.raises(LMError, match="batch_wait_ms must be >= 0"):
            LocalEngine(batch_wait_ms=-1)

    def test_shared_engines_state_and_copies(self):
        engine = LocalEngine.shared(max_batch=3, batch_wait_ms=7)
        assert LocalEngine.shared(max_batch=3, batch_wait_ms=7) is engine
        assert LocalEngine.load_state(engine.dump_state()) is engine
        assert copy.deepcopy(engine) is engine and copy.copy(engine) is engine
        assert LocalEngine.shared(max_batch=4) is not engine
        async_engine = AsyncLocalEngine.load_state(engine.dump_state())
        assert async_engine.engine is engine


# ---------------------------------------------------------------------------------------------------------------------
# Real generate() with a tiny random model: the grammar alone makes noise parse
# ---------------------------------------------------------------------------------------------------------------------
class Plan(pydantic.BaseModel):
    goal: str
    steps: list[str]


class Typed(dspy.Signature):
    """Plan."""

    task: str = dspy.InputField()
    answer: str = dspy.OutputField()
    plan: Plan = dspy.OutputField()
    level: Literal["easy", "hard"] = dspy.OutputField()
    count: int = dspy.OutputField()
    ok: bool = dspy.OutputField()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


class TestTinyModel:
    def test_random_model_parses_with_grammar_and_batches(self, tiny_dir):
        lm = get_lm(f"local/{tiny_dir}", cache=False, temperature=1.0, max_tokens=300, max_batch=16)
        examples = [dspy.Example(task=f"task {i}").with_inputs("task") for i in range(12)]
        before = len(lm.engine.batches)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
            results = dspy.Predict(Typed).batch(examples, num_threads=12, disable_progress_bar=True, max_errors=100)
        assert all(r is not None for r in results), "every typed answer parses"
        assert all(isinstance(r.plan, Plan) and r.level in ("easy", "hard") for r in results)
        sizes = [b.size for b in list(lm.engine.batches)[before:]]
        assert sum(sizes) == 12 and max(sizes) > 1, sizes

    def test_without_grammar_noise_does_not_parse(self, tiny_dir):
        lm = get_lm(f"local/{tiny_dir}", cache=False, max_tokens=40)
        with (
            dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)),
            pytest.raises(dspy.utils.exceptions.AdapterParseError),
        ):
            dspy.Predict(Typed)(task="t")

    def test_json_adapter_uses_response_format(self, tiny_dir):
        lm = get_lm(f"local/{tiny_dir}", cache=False, max_tokens=300)
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            out = dspy.Predict(Typed)(task="t")
        assert isinstance(out.plan, Plan)
        assert lm.history[-1]["outputs"][0].lstrip().startswith("{")

    def test_row_limits_usage_and_finish_reason(self, tiny_dir):
        from dspy.lm15 import Config, Message, Request

        lm = get_lm(f"local/{tiny_dir}", cache=False)
        engine = lm.engine
        requests = [
            Request(model=lm.model, messages=(Message.user("a"),), config=Config(max_tokens=n, temperature=1.0))
            for n in (3, 9)
        ]
        with ThreadPoolExecutor(2) as pool:
            short, long = pool.map(engine.complete, requests)
        # Free generation of noise rarely emits EOS within 3 tokens; the limit must hold per row in a shared batch.
        assert short.usage.output_tokens <= 3 and long.usage.output_tokens <= 9
        assert short.finish_reason in ("stop", "length") and short.usage.input_tokens > 3
        if short.usage.output_tokens == 3:
            assert short.finish_reason == "length"

    def test_shared_system_prefix_is_reused_and_changes_nothing(self, tiny_dir):
        from dspy.lm15 import Config, Message, Request

        from refine.lm.loader import load_model

        lm = get_lm(f"local/{tiny_dir}", cache=False)
        engine, loaded = lm.engine, load_model(lm.model)
        system = "You are a planner. " * 12
        requests = [
            Request(
                model=lm.model,
                system=system,
                messages=(Message.user(text),),
                config=Config(max_tokens=12, temperature=0.0),
            )
            for text in ("short", "a much longer user message here", "mid size one")
        ]

        def run_all():
            before = len(engine.batches)
            with ThreadPoolExecutor(3) as pool:
                texts = [r.text for r in pool.map(engine.complete, requests)]
            return texts, list(engine.batches)[before:]

        loaded.prefix_cache.clear()
        with_prefix, batches = run_all()
        assert all(b.prefix_tokens > 0 for b in batches), batches
        # The system turn was computed once; each row's prompt + answer was then kept for its next turn.
        assert len(loaded.prefix_cache) == 3
        loaded.prefix_cache.clear()
        entries, loaded.prefix_cache_entries = loaded.prefix_cache_entries, 0
        try:
            without_prefix, batches = run_all()
        finally:
            loaded.prefix_cache_entries = entries
        assert all(b.prefix_tokens == 0 for b in batches)
        assert with_prefix == without_prefix, "reusing the prefix KV cache must not change greedy outputs"

    def test_multi_turn_episodes_reuse_their_previous_turn_and_change_nothing(self, tiny_dir):
        """Turn t+1 starts from the KV cache of turn t (prompt + answer): only the new message is computed."""
        from dspy.lm15 import Config, Message, Request

        from refine.lm.loader import load_model

        lm = get_lm(f"local/{tiny_dir}", cache=False)
        engine, loaded = lm.engine, load_model(lm.model)
        system = "You act in a text world. Answer with one action. " * 4
        openings = ["You see a door.", "A long corridor stretches north, lit by torches on both walls.", "Dark."]

        def play(turns: int) -> tuple[list[list[str]], list]:
            histories = [[Message.user(text)] for text in openings]
            answers: list[list[str]] = [[] for _ in openings]
            records = []

            def turn(i: int) -> None:
                request = Request(
                    model=lm.model, system=system, messages=tuple(histories[i]), config=Config(max_tokens=8)
                )
                text = engine.complete(request).text
                answers[i].append(text)
                histories[i] += [Message.assistant(text), Message.user(f"Observation {len(answers[i])}: nothing.")]

            for _ in range(turns):
                before = len(engine.batches)
                with ThreadPoolExecutor(len(openings)) as pool:
                    list(pool.map(turn, range(len(openings))))
                records.append(list(engine.batches)[before:])
            return answers, records

        loaded.prefix_cache.clear()
        with_reuse, records = play(3)
        first_prompt = sum(b.prompt_tokens for b in records[0])
        for earlier, later in itertools.pairwise(records):
            reused = sum(b.prefix_tokens for b in later)
            # Every row reuses at least its whole previous prompt (more when the answer re-tokenizes identically).
            assert reused >= sum(b.prompt_tokens for b in earlier), (earlier, later)
        assert sum(b.prefix_tokens for b in records[0]) < first_prompt
        assert len(loaded.prefix_cache) == len(openings), "one entry per episode: each turn replaces the previous"
        entries, loaded.prefix_cache_entries = loaded.prefix_cache_entries, 0
        try:
            without_reuse, records = play(3)
        finally:
            loaded.prefix_cache_entries = entries
            loaded.prefix_cache.clear()
        assert all(b.prefix_tokens == 0 for batch in records for b in batch)
        assert with_reuse == without_reuse, "reusing earlier turns' KV caches must not change greedy outputs"

    def test_rows_with_very_different_uncached_lengths_are_prefilled_in_buckets(self, tiny_dir):
        """A new episode's long first turn batched with later turns of others: no row is padded to the longest."""
        from dspy.lm15 import Config, Message, Request

        from refine.lm.loader import load_model

        lm = get_lm(f"local/{tiny_dir}", cache=False)
        engine, loaded = lm.engine, load_model(lm.model)
        system = "You act in a text world. Answer with one action. " * 4

        def request(*texts: str) -> Request:
            msgs = tuple(Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts))
            return Request(model=lm.model, system=system, messages=msgs, config=Config(max_tokens=6))

        warm = [request("Short start one."), request("Short start two.")]
        long_first = request("A very long first observation of a brand new episode, " * 12)

        def run() -> tuple[list[str], list]:
            firsts = [engine.complete(r).text for r in warm]  # sequential: fills the store
            later = [request(w.messages[0].text, t, "Next observation.") for w, t in zip(warm, firsts, strict=True)]
            before = len(engine.batches)
            with ThreadPoolExecutor(3) as pool:
                texts = [r.text for r in pool.map(engine.complete, [*later, long_first])]
            return firsts + texts, list(engine.batches)[before:]

        loaded.prefix_cache.clear()
        with_reuse, batches = run()
        assert len(batches) == 1 and batches[0].size == 3, batches
        # Every row was prefilled up to its last token (the two later turns together, the long first turn alone),
        # then the three were decoded together.
        assert (batches[0].prefilled_rows, batches[0].prefill_passes) == (3, 2)
        assert 0 < batches[0].prefix_tokens < batches[0].prompt_tokens
        entries, loaded.prefix_cache_entries = loaded.prefix_cache_entries, 0
        try:
            without_reuse, _ = run()
        finally:
            loaded.prefix_cache_entries = entries
            loaded.prefix_cache.clear()
        assert with_reuse == without_reuse

    def test_cache_answers_identical_calls_without_the_engine(self, tiny_dir, tmp_path):
        from refine.lm.resolve import configure_cache

        saved_cache = dspy.cache

        configure_cache(tmp_path / "cache")
        try:
            lm = get_lm(f"local/{tiny_dir}", max_tokens=120)
            engine = lm.engine
            with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
                before = len(engine.batches)
                first = dspy.Predict("question -> answer")(question="cache me")
                after_first = len(engine.batches)
                second = dspy.Predict("question -> answer")(question="cache me")
            assert after_first == before + 1
            assert len(engine.batches) == after_first, "the second identical call reached the engine"
            assert first.answer == second.answer
        finally:
            dspy.cache = saved_cache  # restore the session's cache for later tests

    def test_save_and_load_program_with_its_lm(self, tiny_dir, tmp_path):
        lm = get_lm(f"local/{tiny_dir}", cache=False, max_tokens=64)
        program = dspy.Predict("question -> answer")
        program.set_lm(lm)
        program.save(str(tmp_path / "p.json"))
        fresh = dspy.Predict("question -> answer")
        fresh.load(str(tmp_path / "p.json"), allow_unsafe_lm_state=True)
        assert fresh.lm.model == lm.model
        assert fresh.lm.engine is lm.engine, "the loaded LM reuses the shared engine"
        with dspy.context(adapter=GrammarChatAdapter()):
            assert isinstance(fresh(question="q").answer, str)

    def test_async_call(self, tiny_dir):
        lm = get_lm(f"local/{tiny_dir}", cache=False, max_tokens=64)
        program = dspy.Predict("question -> answer")

        async def run():
            with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
                return await asyncio.gather(*(program.acall(question=f"q{i}") for i in range(3)))

        results = asyncio.run(run())
        assert len(results) == 3 and all(isinstance(r.answer, str) for r in results)


def test_react_with_coupled_tool_grammar_calls_tools_with_valid_args(tiny_dir):
    from refine.lm.adapter import react_tool_args

    calls = []

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    def lookup(term: str) -> str:
        """Look a term up."""
        calls.append(term)
        return f"{term} is a thing"

    react = dspy.ReAct("question -> answer", tools=[add, lookup], max_iters=3)
    lm = get_lm(f"local/{tiny_dir}", cache=False, temperature=1.0, max_tokens=300)
    adapter = GrammarChatAdapter(tool_args=react_tool_args(react))
    with dspy.context(lm=lm, adapter=adapter):
        results = react.batch(
            [dspy.Example(question=f"q{i}").with_inputs("question") for i in range(4)],
            num_threads=4,
            disable_progress_bar=True,
            max_errors=4,
        )
    assert all(r is not None and isinstance(r.answer, str) for r in results)
    for result in results:
        trajectory = result.trajectory
        names = [trajectory[k] for k in trajectory if k.startswith("tool_name_")]
        assert names and set(names) <= {"add", "lookup", "finish"}
        for key in (k for k in trajectory if k.startswith("observation_")):
            assert "Execution error" not in str(trajectory[key]), trajectory[key]
    assert all(isinstance(c, str) or all(isinstance(x, int) for x in c) for c in calls)
