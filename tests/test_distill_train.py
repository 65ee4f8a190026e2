"""Training adapter: varlen attention, SFTConfig translation, full and LoRA distillation of a tiny random model."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from refine.distill.config import DistillConfig  # noqa: E402
from refine.distill.labels import build_labels  # noqa: E402
from refine.distill.packed_attention import register_varlen_attention  # noqa: E402
from refine.distill.tiny_bases import make_tiny_model, make_tiny_tokenizer, save_tiny_model  # noqa: E402
from refine.distill.trainer import distill, make_trainer, sft_config_kwargs, tokenize_rows  # noqa: E402
from refine.errors import TrainingError  # noqa: E402

torch.set_num_threads(2)


def rows(n=8):
    out = []
    for i in range(n):
        out.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "system", "content": "You are an agent. Available actions: go to X, take X from Y."},
                    {"role": "user", "content": f"Task: take the key {i}.\nObservation: You are in a kitchen."},
                    {"role": "assistant", "content": f"Thought: look.\nAction: take key {i} from tbl 9", "loss": False},
                    {"role": "user", "content": "Observation: Nothing happens. There is no table 9."},
                    {"role": "assistant", "content": f"Thought: It is table 1.\nAction: take key {i} from table 1"},
                ],
                "provenance": {"models": {"teacher": "scripted"}, "persona": f"p{i % 3}", "program_hash": "abc"},
            }
        )
    return out


class TestVarlenAttention:
    @pytest.mark.parametrize("kv_heads", [4, 2])
    def test_packed_row_equals_separate_sequences(self, kv_heads):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        tok = make_tiny_tokenizer()
        model = make_tiny_model(tok)
        model.config.num_key_value_heads = kv_heads
        model = type(model)(model.config).eval()
        seqs = [torch.randint(5, 200, (n,)).tolist() for n in (7, 13, 5)]
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in seqs])
        batch.pop("labels")
        with torch.no_grad():
            ref = torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in seqs])
            model.set_attn_implementation(register_varlen_attention())
            packed = model(**batch).logits[0]
            # without document boundaries it behaves like SDPA (generation, padded batches)
            single = model(input_ids=torch.tensor([seqs[1]])).logits[0]
        torch.testing.assert_close(packed, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single, ref[7:20], atol=1e-5, rtol=1e-4)


class TestSFTConfigTranslation:
    def test_padding_free_drops_max_length_and_cpu_flag(self, tmp_path):
        kw = sft_config_kwargs(DistillConfig(out=tmp_path), cuda=False, bf16=False, padding_free=True)
        assert kw["max_length"] is None and kw["padding_free"] is True and kw["packing"] is False
        assert kw["use_cpu"] is True and kw["optim"] == "adamw_torch"
        ckpt = "activation_checkpointing" if "activation_checkpointing" in kw else "gradient_checkpointing"
        assert kw[ckpt] is False, "auto: no checkpointing on CPU unless distill() finds the batch too big"
        on = sft_config_kwargs(
            DistillConfig(out=tmp_path, gradient_checkpointing=True), cuda=False, bf16=False, padding_free=True
        )
        assert on[ckpt] is True and on[f"{ckpt}_kwargs"] == {"use_reentrant": False}

    def test_padded_keeps_max_length_and_lora_lr(self, tmp_path):
        cfg = DistillConfig(out=tmp_path, lora=True, max_length=512, gradient_checkpointing=False)
        kw = sft_config_kwargs(cfg, cuda=True, bf16=True, padding_free=False)
        assert kw["max_length"] == 512 and kw["learning_rate"] == 2e-4 and kw["bf16"] is True
        assert kw["optim"] == "adamw_torch_fused" and "use_cpu" not in kw


def test_trainer_batches_keep_our_labels(tmp_path):
    """TRL must neither re-mask nor unmask: the labels reaching the model are exactly build_labels' labels."""
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    model.set_attn_implementation(register_varlen_attention())
    examples, stats = tokenize_rows(tok, rows(3), max_length=4096)
    cfg = DistillConfig(out=tmp_path, batch_size=3, max_steps=1)
    trainer = make_trainer(model, tok, examples, cfg, padding_free=True, bf16=False)
    batch = next(iter(trainer.get_train_dataloader()))
    got = batch["labels"][0].tolist()
    want = [lab for ex in examples for lab in ex["labels"]]
    assert sorted(got) == sorted(want)  # the sampler may reorder rows, never change a label
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch and "attention_mask" not in batch
    assert stats["examples"] == 3 and 0.5 < stats["masked_fraction"] < 1


def test_packing_keeps_labels_and_document_boundaries(tmp_path):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    model.set_attn_implementation(register_varlen_attention())
    examples, _ = tokenize_rows(tok, rows(6), max_length=4096)
    length = len(examples[0]["input_ids"])
    cfg = DistillConfig(out=tmp_path, batch_size=1, max_steps=1, packing=True, max_length=3 * length)
    assert sft_config_kwargs(cfg, cuda=False, bf16=False, padding_free=True)["max_length"] == 3 * length
    trainer = make_trainer(model, tok, examples, cfg, padding_free=True, bf16=False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, 3 * length)  # three trajectories in one row, no padding
    assert batch["position_ids"][0].tolist() == list(range(length)) * 3
    assert batch["cu_seq_lens_q"].tolist() == [0, length, 2 * length, 3 * length]
    labels = batch["labels"][0].tolist()
    for k in range(3):  # each document keeps exactly its own labels
        assert labels[k * length : (k + 1) * length] in [ex["labels"] for ex in examples]


def test_rows_without_trained_tokens_are_refused():
    tok = make_tiny_tokenizer()
    r = rows(1)
    for m in r[0]["messages"]:
        m["loss"] = False
    with pytest.raises(TrainingError, match="no training row has a trained token"):
        tokenize_rows(tok, r, max_length=4096)


def _eval_loss(model_dir, tok_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = 0.0
    for r in tok_rows:
        ex = build_labels(tok, r["messages"])
        with torch.no_grad():
            total += model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item()
    return total / len(tok_rows)


@pytest.mark.parametrize("padding_free", [True, False])
def test_full_finetune_loss_falls_and_student_answers_through_dspy(tmp_path, padding_free):
    base = save_tiny_model(tmp_path / "base")
    out = tmp_path / "student"
    data = rows(8)
    cfg = DistillConfig(
        out=out, base=str(base), max_steps=12, batch_size=4, learning_rate=5e-3, padding_free=padding_free, seed=1
    )
    res = distill(data, cfg)
    assert res.steps == 12 and len(res.losses) == 12
    assert res.losses[-1] < res.losses[0] * 0.7
    assert _eval_loss(out, data) < _eval_loss(base, data) * 0.7
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "loss_curve.png"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "teacher=scripted" in card and '"ablation": "masked"' in card and "full fine-tuning" in card
    meta = json.loads((out / "refine_distill.json").read_text())
    assert meta["stats"]["padding_free"] is padding_free and meta["stats"]["examples"] == 8

    from refine.lm import get_lm

    lm = get_lm(res.model_string, max_tokens=6, cache=False)
    answers = lm("Task: take the key 1.")
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str | dict)


def test_lora_merged_and_adapter(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    data = rows(8)
    merged = tmp_path / "merged"
    res = distill(
        data,
        DistillConfig(
            out=merged,
            base=str(base),
            lora=True,
            merge_lora=True,
            max_steps=12,
            batch_size=4,
            learning_rate=3e-2,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.0,
        ),
    )
    assert res.losses[-1] < res.losses[0]
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    assert _eval_loss(merged, data) < _eval_loss(base, data)
    assert "merged into the weights" in (merged / "README.md").read_text()

    adapter = tmp_path / "adapter"
    distill(data, DistillConfig(out=adapter, base=str(base), lora=True, max_steps=2, batch_size=4))
    assert (adapter / "adapter_config.json").is_file() and (adapter / "refine_base_model.txt").read_text() == str(base)


class TestSpeedSettings:
    def test_liger_is_off_without_the_package_or_a_gpu_and_refused_when_forced(self, tmp_path):
        from refine.distill.trainer import liger_kernel_available, use_liger_kernel

        assert use_liger_kernel(DistillConfig(out=tmp_path), cuda=False) is False
        assert use_liger_kernel(DistillConfig(out=tmp_path), cuda=True) is liger_kernel_available()
        assert use_liger_kernel(DistillConfig(out=tmp_path, liger_kernel=False), cuda=True) is False
        with pytest.raises(TrainingError, match="liger_kernel=True needs a CUDA GPU and the liger-kernel package"):
            use_liger_kernel(DistillConfig(out=tmp_path, liger_kernel=True), cuda=False)
        kw = sft_config_kwargs(DistillConfig(out=tmp_path), cuda=False, bf16=False, padding_free=True)
        assert kw["use_liger_kernel"] is False

    def test_warmup_reaches_the_installed_transformers(self, tmp_path):
        # transformers >= 5.2x has no warmup_ratio: the ratio must arrive as a float warmup_steps, not be dropped
        kw = sft_config_kwargs(DistillConfig(out=tmp_path, warmup_ratio=0.1), cuda=False, bf16=False, padding_free=True)
        assert kw.get("warmup_ratio", kw.get("warmup_steps")) == pytest.approx(0.1)
        from trl import SFTConfig

        args = SFTConfig(**kw)
        assert args.get_warmup_steps(100) == 10

    @pytest.mark.parametrize("lora", [False, True])
    def test_lean_loss_equals_trl_loss_and_gradients(self, tmp_path, lora):
        """token_metrics=False: the same loss and gradients as TRL's compute_loss, and no per-batch metrics."""
        tok = make_tiny_tokenizer()
        examples, _ = tokenize_rows(tok, rows(4), max_length=4096)
        results = {}
        for metrics in (True, False):
            model = make_tiny_model(tok)
            model.set_attn_implementation(register_varlen_attention())
            out = tmp_path / str(metrics)
            cfg = DistillConfig(out=out, batch_size=4, max_steps=1, token_metrics=metrics, lora=lora)
            trainer = make_trainer(model, tok, examples, cfg, padding_free=True, bf16=False)
            assert type(trainer).__name__ == ("SFTTrainer" if metrics else "LeanSFTTrainer")
            batch = next(iter(trainer.get_train_dataloader()))
            trainer.model.train()
            n_items = int((batch["labels"][:, 1:] != -100).sum())
            loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(n_items))
            loss.backward()
            grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            results[metrics] = (loss.item(), grads, dict(trainer._metrics["train"]))
        (full_loss, full_grads, full_metrics), (lean_loss, lean_grads, lean_metrics) = results[True], results[False]
        assert lean_loss == pytest.approx(full_loss, rel=1e-6)
        assert full_grads.keys() == lean_grads.keys() and full_grads
        for name, g in full_grads.items():
            torch.testing.assert_close(lean_grads[name], g, atol=1e-6, rtol=1e-5)
        assert full_metrics.get("entropy") and not lean_metrics.get("entropy")
