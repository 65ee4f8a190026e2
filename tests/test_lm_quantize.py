"""Weight-only quantized linears of the in-process engine: exact on a Q4_1 grid, close elsewhere, wired through the
loader, the engine and `get_lm`."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from refine.errors import LMError  # noqa: E402
from refine.lm.loader import load_model, resolve_quantize  # noqa: E402
from refine.lm.quantize import GROUP_SIZE, Int4Linear, Int8Linear, dense_rows_for, quantize_linears  # noqa: E402


def _q4_1_linear(out_features: int, in_features: int, seed: int = 0) -> torch.nn.Linear:
    """A linear whose weights are a Q4_1 dequantization (q * d + m per group of 32, q in 0..15, both ends used)."""
    gen = torch.Generator().manual_seed(seed)
    groups = in_features // GROUP_SIZE
    q = torch.randint(0, 16, (out_features, groups, GROUP_SIZE), generator=gen)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(out_features, groups, 1, generator=gen) * 0.01 + 1e-3
    m = -torch.rand(out_features, groups, 1, generator=gen) * 0.05
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_((q * d + m).reshape(out_features, in_features))
    return linear


def test_int4_reproduces_weights_on_the_q4_1_grid_exactly():
    linear = _q4_1_linear(48, 96)
    x = torch.randn(5, 96)
    with torch.inference_mode():
        layer = Int4Linear(linear)
        torch.testing.assert_close(layer.dequantized(), linear.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-4)


def test_int8_is_close_to_float32_and_keeps_bias_and_3d_shapes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 40)
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        layer = Int8Linear(linear)
        out = layer(x)
        assert out.shape == (2, 3, 40)
        # Exactly the dequantized weight's product, and within int8 rounding of float32.
        torch.testing.assert_close(out, x @ layer.dequantized().T + linear.bias, atol=1e-4, rtol=1e-4)
        assert (out - linear(x)).abs().max() < 0.02
        assert not torch.allclose(out, linear(x), atol=1e-7)  # it did quantize


def test_int4_refuses_input_features_off_the_group():
    with pytest.raises(LMError, match="divisible by 32"):
        Int4Linear(torch.nn.Linear(40, 8))


def test_many_rows_use_the_dense_onednn_copy(monkeypatch):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN")
    linear = _q4_1_linear(32, 64)
    calls = []
    real = torch.ops.aten.mkldnn_linear
    with torch.inference_mode():
        layer = Int4Linear(linear, dense_rows=4)
        monkeypatch.setattr(torch.ops.aten, "mkldnn_linear", lambda *a: calls.append(1) or real(*a))
        few, many = torch.randn(3, 64), torch.randn(4, 64)
        torch.testing.assert_close(layer(few), linear(few), atol=1e-5, rtol=1e-4)
        assert calls == []
        torch.testing.assert_close(layer(many), linear(many), atol=1e-5, rtol=1e-4)
        assert calls == [1]


def test_dense_rows_setting(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    monkeypatch.delenv("REFINE_QUANT_DENSE_ROWS", raising=False)
    assert dense_rows_for(model, "int8dyn") is None  # faster than float32 at every batch size
    if torch.backends.mkldnn.is_available():
        assert dense_rows_for(model, "int4") == 2
    monkeypatch.setenv("REFINE_QUANT_DENSE_ROWS", "0")
    assert dense_rows_for(model) is None
    monkeypatch.setenv("REFINE_QUANT_DENSE_ROWS", "3")
    assert dense_rows_for(model) == 3
    monkeypatch.setenv("REFINE_QUANT_DENSE_ROWS", "many")
    with pytest.raises(LMError, match="REFINE_QUANT_DENSE_ROWS must be a non-negative integer"):
        dense_rows_for(model)


def test_modes_resolve_from_argument_then_environment(monkeypatch):
    monkeypatch.delenv("REFINE_LM_QUANT", raising=False)
    assert resolve_quantize(None) == "none"
    monkeypatch.setenv("REFINE_LM_QUANT", "INT4")
    assert resolve_quantize(None) == "int4"
    assert resolve_quantize("int8") == "int8"
    assert resolve_quantize("off") == "none"
    with pytest.raises(LMError, match=r"Unknown quantize mode 'int3'.*none, int8, int4"):
        resolve_quantize("int3")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def test_quantize_linears_swaps_every_linear_and_the_head_is_int8(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.randint(5, 200, (2, 12))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        linears = sum(type(m) is torch.nn.Linear for m in model.modules())
        assert quantize_linears(model, "int4") == linears > 0
        after = model(input_ids=ids).logits
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == linears - 1
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    # Random weights are far from any 4-bit grid, so the logits move, but they keep their direction.
    assert not torch.equal(after, before)
    assert torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0) > 0.9
    assert quantize_linears(model, "none") == 0


def test_loader_keeps_quantized_and_float_models_apart(tiny_dir):
    plain = load_model(f"local/{tiny_dir}")
    int8 = load_model(f"local/{tiny_dir}", quantize="int8")
    assert plain is not int8 and int8 is load_model(f"local/{tiny_dir}", quantize="int8")
    assert (plain.quantize, int8.quantize) == ("none", "int8")
    assert isinstance(int8.model.get_output_embeddings(), Int8Linear)
    with pytest.raises(LMError, match="quantize='int4' needs a float32 model on CPU"):
        load_model(f"local/{tiny_dir}", dtype="bfloat16", quantize="int4")


def test_engine_and_get_lm_take_the_mode(tiny_dir):
    from refine.lm.engine import LocalEngine
    from refine.lm.resolve import get_lm

    with pytest.raises(LMError, match="Unknown quantize mode 'q5'"):
        LocalEngine(quantize="q5")
    lm = get_lm(f"local/{tiny_dir}", cache=False, max_tokens=8, quantize="int4")
    assert lm.engine.quantize == "int4" and lm.engine.config()["quantize"] == "int4"
    out = lm(messages=[{"role": "user", "content": "hello"}])
    assert isinstance(out[0], str)
    loaded = load_model(f"local/{tiny_dir}", quantize="int4")
    assert sum(isinstance(m, Int4Linear) for m in loaded.model.modules()) > 0


def test_dynamic_int8_through_the_quantized_engine_is_close_to_float32():
    from refine.lm.quantize import DynamicInt8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    x = torch.randn(4, 64)
    with torch.inference_mode():
        out = DynamicInt8Linear(linear)(x)
        ref = linear(x)
    assert out.shape == ref.shape and (out - ref).abs().max() < 0.05 * ref.abs().max()
