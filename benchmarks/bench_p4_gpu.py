"""P4: distillation throughput, our padding-free path vs a plain TRL `SFTTrainer` with padding and default settings.

Both trainers see the same random-init Llama-shaped model, the same pre-tokenized turn-masked rows (384-2048 tokens,
about half the tokens masked in 32-160-token spans, like trajectories with masked system/user/error turns) and the
same sequences per optimizer step, in one process. Reported: real (non-padding) tokens/s and MFU = 6·N·tokens/s over
the card's dense bf16 peak (989 TFLOP/s for an H100 SXM), plus peak memory.

    python benchmarks/bench_p4_gpu.py                      # the 1B shape on a GPU
    python benchmarks/bench_p4_gpu.py --shape tiny --cpu   # seconds on a CPU (the test that keeps it from rotting)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "make_rows", "run_variant"]

SHAPES = {
    "1b": {"hidden": 2048, "inter": 5632, "layers": 20, "heads": 32, "kv": 8, "vocab": 49152, "lens": (384, 2048)},
    "tiny": {"hidden": 64, "inter": 128, "layers": 2, "heads": 4, "kv": 2, "vocab": 512, "lens": (24, 96)},
}
PEAK_FLOPS = 989e12


def make_rows(n: int, lens: tuple[int, int], vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows whose labels alternate masked and trained spans of 32-160 tokens (scaled for tiny)."""
    rng = random.Random(seed)
    span = (32, 160) if lens[1] >= 512 else (4, 16)
    rows = []
    for _ in range(n):
        length = rng.randint(*lens)
        ids = [rng.randrange(16, vocab) for _ in range(length)]
        labels, pos, trained = [], 0, False  # a trajectory opens with system + user: masked
        while pos < length:
            k = min(rng.randint(*span), length - pos)
            labels += ids[pos : pos + k] if trained else [-100] * k
            pos, trained = pos + k, not trained
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _model(shape: dict[str, Any], device: str, dtype: Any, attn: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def _tokenizer(vocab: int) -> Any:
    from refine.distill.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer("chatml")  # only its pad/eos ids are used: rows are pre-tokenized
    return tok


class _Counter:
    """Wraps a collator to record, per micro-batch, real tokens, computed (padded) tokens and sequence lengths."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.batches = inner, []

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        out = self.inner(examples)
        lens = sorted(len(e["input_ids"]) for e in examples)
        self.batches.append({"real": sum(lens), "computed": int(out["input_ids"].numel()), "lens": lens})
        return out


def _timer_callback(times: list[float], sync: Any) -> Any:
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            times.append(time.perf_counter())

    return _Timer()


def run_variant(
    name: str,
    rows: list[dict[str, list[int]]],
    shape: dict[str, Any],
    *,
    seqs_per_step: int,
    micro: int,
    steps: int,
    warmup: int,
    cpu: bool,
    profile: bool = False,
) -> dict[str, Any]:
    """Train `warmup + steps` optimizer steps with one trainer and measure the last `steps`."""
    import torch
    from datasets import Dataset

    device = "cpu" if cpu else "cuda"
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    dtype = torch.float32 if cpu else torch.bfloat16
    tok = _tokenizer(shape["vocab"])
    out_dir = tempfile.mkdtemp(prefix=f"p4-{name}-")
    if not cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if name == "trl-default":
        from trl import SFTConfig, SFTTrainer

        model = _model(shape, device, dtype, "sdpa")
        args = SFTConfig(
            output_dir=out_dir,
            bf16=not cpu,
            max_length=2048,
            learning_rate=1e-4,
            per_device_train_batch_size=seqs_per_step,
            max_steps=warmup + steps,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            use_cpu=cpu,
            seed=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    else:
        from refine.distill.attention import register_varlen_attention
        from refine.distill.config import DistillConfig
        from refine.distill.trainer import make_trainer

        model = _model(shape, device, dtype, register_varlen_attention())
        cfg = DistillConfig(
            out=Path(out_dir),
            batch_size=micro,
            grad_accum=seqs_per_step // micro,
            max_steps=warmup + steps,
            learning_rate=1e-4,
            gradient_checkpointing=False,
            padding_free=True,
            bf16=not cpu,
            logging_steps=10_000,
            warmup_ratio=0.0,
            seed=0,
            torch_compile=name == "refine-compile",
        )
        trainer = make_trainer(model, tok, rows, cfg, padding_free=True, bf16=not cpu)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    times: list[float] = []
    trainer.add_callback(_timer_callback(times, sync))
    sync()
    start = time.perf_counter()
    prof_table = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as _profile

        acts = [ProfilerActivity.CPU] + ([] if cpu else [ProfilerActivity.CUDA])
        with _profile(activities=acts) as prof:
            trainer.train()
        sort = "self_cpu_time_total" if cpu else "self_cuda_time_total"
        prof_table = prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60)
    else:
        trainer.train()
    total = time.perf_counter() - start
    accum = max(1, len(counter.batches) // (warmup + steps))
    per_step = [counter.batches[i * accum : (i + 1) * accum] for i in range(warmup + steps)]
    measured = per_step[warmup:]
    real = sum(b["real"] for s in measured for b in s)
    computed = sum(b["computed"] for s in measured for b in s)
    secs = times[-1] - times[warmup - 1] if warmup else times[-1] - start
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "variant": name,
        "seqs_per_step": seqs_per_step,
        "micro_batch": micro if name != "trl-default" else seqs_per_step,
        "steps_measured": steps,
        "seconds": round(secs, 3),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_fraction": round(1 - real / computed, 4),
        "real_tokens_per_s": round(real / secs, 1),
        "mfu": round(6 * n_params * real / secs / PEAK_FLOPS, 4),
        "params": n_params,
        "peak_mem_gib": None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "total_seconds": round(total, 2),
        "step_lengths": [sorted(x for b in s for x in b["lens"]) for s in per_step],
        "final_loss": next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
    }
    if prof_table:
        result["profile"] = prof_table
        print(prof_table, file=sys.stderr)
    del trainer, model
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    return result


def _check_varlen(cpu: bool) -> dict[str, Any]:
    """Packed rows through `refine_varlen` must match each sequence run alone (bf16 on GPU)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from refine.distill.attention import register_varlen_attention, varlen_kernel_available

    device, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    shape = dict(SHAPES["tiny"], hidden=256, inter=512, heads=8, kv=2, layers=2)
    model = _model(shape, device, dtype, "sdpa").eval()
    seqs = [torch.randint(16, 512, (n,)).tolist() for n in (300, 17, 129, 64)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in seqs])
    batch.pop("labels")
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    with torch.no_grad():
        ref = torch.cat([model(input_ids=torch.tensor([s], device=device)).logits[0] for s in seqs]).float()
        model.set_attn_implementation(register_varlen_attention())
        got = model(**batch).logits[0].float()
    rel = ((got - ref).norm() / ref.norm()).item()
    return {"varlen_kernel": varlen_kernel_available(), "packed_vs_separate_rel_err": rel, "ok": rel < 2e-2}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--cpu", action="store_true", help="run on CPU (tiny shape)")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--batches", default="8,32", help="sequences per optimizer step, comma-separated")
    p.add_argument("--micro", type=int, default=8, help="our micro-batch (sequences); grad accumulation fills the step")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", default="trl-default,refine")
    p.add_argument("--profile", action="store_true", help="profile the `refine` variant (kernel table)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    a = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch
    import transformers
    import trl

    if a.cpu:
        torch.set_num_threads(2)
    shape = SHAPES[a.shape]
    rows = make_rows(a.rows, shape["lens"], shape["vocab"])
    env = {
        "device": "cpu" if a.cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "shape": a.shape,
        "rows": a.rows,
        "masked_fraction": round(
            sum(lab == -100 for r in rows for lab in r["labels"]) / sum(len(r["labels"]) for r in rows), 3
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    env["varlen_check"] = _check_varlen(a.cpu)
    print(json.dumps(env), flush=True)
    results = []
    for b in [int(x) for x in a.batches.split(",")]:
        for v in a.variants.split(","):
            r = run_variant(
                v,
                rows,
                shape,
                seqs_per_step=b,
                micro=min(a.micro, b),
                steps=a.steps,
                warmup=a.warmup,
                cpu=a.cpu,
                profile=a.profile and v == "refine-profile",
            )
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("step_lengths", "profile")}), flush=True)
    report = {"env": env, "results": results, "comparisons": []}
    for b in sorted({r["seqs_per_step"] for r in results}):
        pair = {r["variant"]: r for r in results if r["seqs_per_step"] == b}
        for ours_name in ("refine", "refine-compile"):
            if "trl-default" not in pair or ours_name not in pair:
                continue
            base, ours = pair["trl-default"], pair[ours_name]
            report["comparisons"].append(
                {
                    "seqs_per_step": b,
                    "ours": ours_name,
                    "speedup": round(ours["real_tokens_per_s"] / base["real_tokens_per_s"], 3),
                    "same_sequences_per_step": base["step_lengths"] == ours["step_lengths"],
                    "baseline_tok_s": base["real_tokens_per_s"],
                    "ours_tok_s": ours["real_tokens_per_s"],
                    "baseline_mfu": base["mfu"],
                    "ours_mfu": ours["mfu"],
                    "final_loss_baseline_vs_ours": [base["final_loss"], ours["final_loss"]],
                }
            )
    print("\n| seqs/step | variant | real tok/s | MFU | padding | peak GiB |", file=sys.stderr)
    for r in results:
        print(
            f"| {r['seqs_per_step']} | {r['variant']} | {r['real_tokens_per_s']:.0f} | {r['mfu']:.1%} | "
            f"{r['padding_fraction']:.0%} | {r['peak_mem_gib']} |",
            file=sys.stderr,
        )
    for c in report["comparisons"]:
        print(json.dumps(c), file=sys.stderr)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
