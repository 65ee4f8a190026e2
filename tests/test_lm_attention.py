"""The engine's trimmed SDPA attention: same results as transformers' SDPA, less work on padded batches."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refine.lm import attention  # noqa: E402
from refine.lm.attention import TRIMMED_ATTENTION, plan_groups, register_trimmed_attention  # noqa: E402


def test_plan_groups_covers_every_row_once_and_never_cuts_a_used_column():
    starts = [0, 3, 400, 410, 700, 720, 900, 905]
    groups = plan_groups(starts, 1000)
    rows = [row for first, last, _ in groups for row in range(first, last)]
    assert rows == list(range(len(starts)))
    for first, last, start in groups:
        assert start <= min(starts[first:last])
    assert len(groups) == 4  # spread-out rows: four groups attend over far fewer columns than one


def test_plan_groups_keeps_one_call_when_rows_are_alike():
    assert plan_groups([5, 6, 7, 8, 9, 10], 1000) == [(0, 6, 5)]
    assert plan_groups([40], 100) == [(0, 1, 40)]


def _gqa_model():
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query heads: the enable_gqa path
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_trimmed_attention_matches_sdpa_on_a_padded_batch(monkeypatch):
    model = _gqa_model()
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (6, 200))
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 5, 100, 105, 170, 175]):  # longest first, as the engine orders rows
        mask[row, :pad] = 0
    plans = []
    real_plan = attention.plan_groups
    monkeypatch.setattr(attention, "plan_groups", lambda s, e: plans.append(real_plan(s, e)) or plans[-1])

    def run(implementation: str):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=6,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    expected = run("sdpa")
    got = run(register_trimmed_attention())
    assert torch.equal(expected.sequences, got.sequences)
    for a, b in zip(expected.scores, got.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert any(len(plan) > 1 for plan in plans), "the padded rows should have been split into groups"


def test_trimmed_attention_defers_to_sdpa_without_a_mask(monkeypatch):
    from transformers.integrations import sdpa_attention

    model = _gqa_model()
    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = torch.randint(3, 300, (1, 12))
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        model.set_attn_implementation(register_trimmed_attention())
        got = model(input_ids=ids).logits
    torch.testing.assert_close(expected, got)
    assert calls, "an unpadded causal batch has no mask: transformers' SDPA handles it"


def test_loader_uses_trimmed_attention_for_cpu_models(tmp_path):
    from refine.lm.loader import load_model
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    loaded = load_model(f"local/{make_tiny_chat_model(tmp_path / 'model')}")
    assert loaded.model.config._attn_implementation == TRIMMED_ATTENTION


def test_a_mask_broadcast_over_rows_goes_to_sdpa():
    from refine.lm.attention import _trimmed_sdpa_forward

    class Module:
        num_key_value_groups = 2
        is_causal = True

    torch.manual_seed(2)
    query, key, value = torch.randn(3, 4, 1, 8), torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    mask = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    mask[..., :4] = False
    out, _ = _trimmed_sdpa_forward(Module(), query, key, value, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    assert out.shape == (3, 1, 4, 8)
    torch.testing.assert_close(out, expected.transpose(1, 2))
