"""CPU defaults of distillation: activation checkpointing only where the activations would not fit the budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from refine.distill.config import DistillConfig, activation_bytes

SMOLLM2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)


def test_activation_estimate_grows_with_tokens_and_width():
    one = activation_bytes(1000, SMOLLM2)
    assert activation_bytes(2000, SMOLLM2) == 2 * one
    wider = SimpleNamespace(**{**vars(SMOLLM2), "hidden_size": 1152})
    assert activation_bytes(1000, wider) > one


def test_auto_checkpointing_is_on_with_cuda_and_on_cpu_only_past_the_budget(tmp_path, monkeypatch):
    monkeypatch.delenv("REFINE_DISTILL_CPU_ACT_MB", raising=False)
    cfg = DistillConfig(out=tmp_path)
    assert cfg.gradient_checkpointing == "auto"
    assert cfg.resolved_checkpointing(cuda=True, micro_tokens=16, model_config=SMOLLM2) is True
    assert cfg.resolved_checkpointing(cuda=False, micro_tokens=1024, model_config=SMOLLM2) is False
    assert cfg.resolved_checkpointing(cuda=False, micro_tokens=16 * 2048, model_config=SMOLLM2) is True
    monkeypatch.setenv("REFINE_DISTILL_CPU_ACT_MB", "100")
    assert cfg.resolved_checkpointing(cuda=False, micro_tokens=1024, model_config=SMOLLM2) is True
    monkeypatch.setenv("REFINE_DISTILL_CPU_ACT_MB", "lots")
    with pytest.raises(ValueError, match="REFINE_DISTILL_CPU_ACT_MB must be a number of MiB, got 'lots'"):
        cfg.resolved_checkpointing(cuda=False, micro_tokens=1024, model_config=SMOLLM2)


def test_an_explicit_setting_wins(tmp_path):
    for value in (True, False):
        cfg = DistillConfig(out=tmp_path, gradient_checkpointing=value)
        for cuda in (True, False):
            assert cfg.resolved_checkpointing(cuda=cuda, micro_tokens=10**6, model_config=SMOLLM2) is value


def test_sft_kwargs_never_pass_auto_through(tmp_path):
    pytest.importorskip("trl")
    from refine.distill.trainer import sft_config_kwargs

    kw = sft_config_kwargs(DistillConfig(out=tmp_path), cuda=False, bf16=False, padding_free=False)
    key = "activation_checkpointing" if "activation_checkpointing" in kw else "gradient_checkpointing"
    assert kw[key] is False
