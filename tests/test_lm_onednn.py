"""oneDNN linears in the engine's CPU models: same outputs as nn.Linear, switchable off."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from refine.lm.onednn import MIN_ROWS, OneDNNLinear, onednn_enabled, use_onednn_linears  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def test_onednn_linear_matches_nn_linear_on_batched_3d_input(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    big, small = torch.randn(3, MIN_ROWS, 24), torch.randn(1, 1, 24)
    packed_calls = []
    real = torch.ops.aten.mkldnn_linear
    with torch.inference_mode():
        packed = OneDNNLinear(linear)
        monkeypatch.setattr(torch.ops.aten, "mkldnn_linear", lambda *a: packed_calls.append(1) or real(*a))
        torch.testing.assert_close(packed(big), linear(big), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed(big.transpose(0, 1)), linear(big.transpose(0, 1)), atol=1e-5, rtol=1e-5)
        assert len(packed_calls) == 2
        torch.testing.assert_close(packed(small), linear(small))  # one row: MKL, as before
        assert len(packed_calls) == 2
    # The state dict is the nn.Linear's: the packed copy is not saved.
    assert set(packed.state_dict()) == {"weight", "bias"}


def test_swap_keeps_greedy_generation_and_can_be_turned_off(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from refine.lm.tiny_chat_model import make_tiny_chat_model

    folder = make_tiny_chat_model(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(3, 200, (2, MIN_ROWS))
    with torch.inference_mode():
        expected = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        logits = model(input_ids=ids).logits
        monkeypatch.setenv("REFINE_ONEDNN", "0")
        assert not onednn_enabled(model) and use_onednn_linears(model) == 0
        monkeypatch.delenv("REFINE_ONEDNN")
        linears = sum(type(m) is torch.nn.Linear for m in model.modules())
        assert use_onednn_linears(model) == linears > 0
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        torch.testing.assert_close(model(input_ids=ids).logits, logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0), expected)


def test_only_float32_cpu_models_within_the_memory_budget_are_wrapped(monkeypatch):
    net = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(torch.bfloat16)
    assert not onednn_enabled(net) and use_onednn_linears(net) == 0
    big = torch.nn.Sequential(torch.nn.Linear(1024, 1024))  # 4 MiB of weights
    monkeypatch.setenv("REFINE_ONEDNN_MAX_MB", "2")
    assert not onednn_enabled(big)
    monkeypatch.setenv("REFINE_ONEDNN", "1")
    assert onednn_enabled(big)


def test_loader_swaps_the_engine_models_linears(tmp_path):
    from refine.lm.loader import load_model
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    loaded = load_model(f"local/{make_tiny_chat_model(tmp_path / 'model')}")
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert "OneDNNLinear" in kinds and "Linear" not in kinds
