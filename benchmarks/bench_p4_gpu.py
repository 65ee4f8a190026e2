"""P4: distillation throughput, our padding-free path vs TRL `SFTTrainer` as a user would set it up.

Every variant trains the same random-init Llama-shaped model on the same pre-tokenized turn-masked rows (384-2048
tokens, about half the tokens masked in 32-160-token spans, like trajectories with masked system/user/error turns)
with the same sequences in every optimizer step. **Each run is a fresh process** (the first variant of a process ran
about 25% slower than later ones on the H200, so in-process comparisons were biased), each process first spins the
GPU for a few seconds of bf16 matrix products, and repeats alternate the order of the variants; the summary gives
the median and the spread (min-max) of each variant over its repeats. Reported: real (non-padding) tokens/s, MFU =
6·N·tokens/s over the card's dense bf16 peak (989 TFLOP/s for H100/H200 SXM; attention FLOPs not counted), peak
memory, and the loss of every step (losses of all variants are compared step by step).

Variant names are read as tokens joined by ``-``: ``trl`` or ``refine`` first, then any of
``default`` (TRL's defaults: one padded micro-batch of all sequences, gradient checkpointing on),
``tuned`` (TRL set up by a skilled user: no gradient checkpointing, fused AdamW, micro-batches + accumulation),
``liger`` (Liger kernels), ``bfd`` (TRL's best-fit-decreasing packing into 2,048-token rows; changes the rows of a
step), ``ckpt`` (gradient checkpointing on), ``lora`` (LoRA r=16 on all linear layers), ``compile`` (torch.compile of
the whole model), ``rcompile`` (torch.compile of each decoder layer), ``lean`` (trl variants: the loss alone, TRL's
fused head without its per-token entropy/accuracy metrics and their host syncs; `refine.distill` does this by default),
``metrics`` (refine variants: ``token_metrics=True``, TRL's own loss and metrics) and ``m<N>`` (micro-batch of N
sequences).
``refine`` alone is ``refine-m8``.

    python benchmarks/bench_p4_gpu.py --variants trl-default,trl-tuned-liger,refine-m16 --repeats 2   # a GPU
    python benchmarks/bench_p4_gpu.py --shape 8b --batches 8 --variants refine-m8,refine-lora-m8 --repeats 1
    python benchmarks/bench_p4_gpu.py --shape tiny --cpu --rows 24 --batches 4   # seconds on a CPU (the test)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "make_rows", "parse_variant", "run_variant", "summarize"]

SHAPES = {
    "1b": {"hidden": 2048, "inter": 5632, "layers": 20, "heads": 32, "kv": 8, "vocab": 49152, "lens": (384, 2048)},
    # Meta-Llama-3-8B's shape (random init): untied 128k-vocabulary head (RoPE theta does not change the speed)
    "8b": {
        "hidden": 4096,
        "inter": 14336,
        "layers": 32,
        "heads": 32,
        "kv": 8,
        "vocab": 128256,
        "lens": (384, 2048),
        "tied": False,
    },
    # the embedded SmolLM2-135M-Instruct's shape, with shorter rows: what CPU distillation trains
    "smollm2": {"hidden": 576, "inter": 1536, "layers": 30, "heads": 9, "kv": 3, "vocab": 49152, "lens": (256, 768)},
    "tiny": {"hidden": 64, "inter": 128, "layers": 2, "heads": 4, "kv": 2, "vocab": 512, "lens": (24, 96)},
}
PEAK_FLOPS = 989e12
_FLAGS = ("default", "tuned", "liger", "bfd", "ckpt", "lora", "compile", "rcompile", "lean", "metrics")


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


def parse_variant(name: str) -> dict[str, Any]:
    """``trl-tuned-liger-m16`` -> {"trainer": "trl", "tuned": True, "liger": True, "micro": 16, ...}."""
    parts = name.split("-")
    if parts[0] not in ("trl", "refine"):
        raise SystemExit(f"variant {name!r}: start with trl or refine (e.g. trl-tuned-liger-m8, refine-m16)")
    spec: dict[str, Any] = {"name": name, "trainer": parts[0], "micro": None, **dict.fromkeys(_FLAGS, False)}
    for p in parts[1:]:
        if p in _FLAGS:
            spec[p] = True
        elif p[:1] == "m" and p[1:].isdigit():
            spec["micro"] = int(p[1:])
        else:
            raise SystemExit(f"variant {name!r}: unknown part {p!r} (known: {', '.join(_FLAGS)}, m<N>)")
    if spec["trainer"] == "trl" and not (spec["default"] or spec["tuned"]):
        raise SystemExit(f"variant {name!r}: a trl variant is trl-default... or trl-tuned...")
    if spec["trainer"] == "refine" and spec["micro"] is None:
        spec["micro"] = 8
    return spec


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
        max_position_embeddings=8192,
        tie_word_embeddings=shape.get("tied", True),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the training dtype: an 8B model in fp32 would need 32 GB first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model


def _tokenizer() -> Any:
    from refine.distill.tiny_bases import make_tiny_tokenizer

    return make_tiny_tokenizer("chatml")  # only its pad/eos ids are used: rows are pre-tokenized


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


def _spin_gpu(seconds: float) -> None:
    """Bring the GPU's clocks up (bf16 matrix products on random data) so no variant starts from idle clocks."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize()
    del a


def _trl_trainer(spec: dict[str, Any], model: Any, tok: Any, rows: list[dict[str, Any]], **kw: Any) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    seqs, micro, cpu = kw["seqs_per_step"], kw["micro"], kw["cpu"]
    args: dict[str, Any] = {
        "output_dir": kw["out_dir"],
        "bf16": not cpu,
        "max_length": 2048,
        "learning_rate": 1e-4,
        "per_device_train_batch_size": seqs,
        "max_steps": kw["max_steps"],
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "use_cpu": cpu,
        "seed": 0,
    }
    if spec["tuned"]:
        args.update(
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=seqs // micro,
            gradient_checkpointing=spec["ckpt"],
            optim="adamw_torch" if cpu else "adamw_torch_fused",
            use_liger_kernel=spec["liger"],
        )
    if spec["bfd"]:
        args.update(packing=True, packing_strategy="bfd", max_length=2048)
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return SFTTrainer(
        model=model,
        args=SFTConfig(**args),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
    )


def _refine_trainer(spec: dict[str, Any], model: Any, tok: Any, rows: list[dict[str, Any]], **kw: Any) -> Any:
    from refine.distill.config import DistillConfig
    from refine.distill.trainer import make_trainer

    cfg = DistillConfig(
        out=Path(kw["out_dir"]),
        batch_size=kw["micro"],
        grad_accum=kw["seqs_per_step"] // kw["micro"],
        max_steps=kw["max_steps"],
        learning_rate=1e-4,
        gradient_checkpointing=spec["ckpt"],
        padding_free=True,
        bf16=not kw["cpu"],
        logging_steps=1,
        warmup_ratio=0.0,
        seed=0,
        torch_compile=spec["compile"],
        liger_kernel=spec["liger"],
        lora=spec["lora"],
        lora_dropout=0.0,
        token_metrics=spec["metrics"],
    )
    return make_trainer(model, tok, rows, cfg, padding_free=True, bf16=not kw["cpu"])


def _lean_loss(trainer: Any, model: Any) -> None:
    """Keep TRL's fused LM head but compute only the log-probabilities: no entropy/accuracy, no `.item()` per batch."""
    import types

    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs",))

    def compute_loss(self: Any, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = types.MethodType(compute_loss, trainer)


def _kernel_profile(prof: Any, wall_s: float) -> dict[str, Any]:
    """Device time per kernel class (matrix products, attention, Triton/Liger, elementwise, optimizer) and wall."""
    classes: dict[str, float] = {}
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if t <= 0 or e.device_type.name != "CUDA":
            continue
        k = e.key.lower()
        if any(x in k for x in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")):
            c = "matmul"
        elif "flash" in k or "fmha" in k or "attn" in k:
            c = "attention"
        elif "adam" in k or "multi_tensor" in k:
            c = "optimizer"
        elif "triton" in k or ("_kernel" in k and "elementwise" not in k and "reduce" not in k):
            c = "triton"
        else:
            c = "elementwise/other"
        classes[c] = classes.get(c, 0.0) + t / 1e6
        rows.append((t / 1e6, e.key[:90], e.count))
    rows.sort(reverse=True)
    busy = sum(classes.values())
    return {
        "wall_s": round(wall_s, 3),
        "device_busy_s": round(busy, 3),
        "classes_s": {k: round(v, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"s": round(t, 4), "kernel": n, "calls": c} for t, n, c in rows[:25]],
    }


def run_variant(
    name: str,
    rows: list[dict[str, list[int]]],
    shape: dict[str, Any],
    *,
    seqs_per_step: int,
    steps: int,
    warmup: int,
    cpu: bool,
    spin_s: float = 0.0,
    profile: bool = False,
) -> dict[str, Any]:
    """Train `warmup + steps` optimizer steps of one variant, measure the last `steps` (run it in a fresh process)."""
    import torch

    spec = parse_variant(name)
    micro = min(spec["micro"] or seqs_per_step, seqs_per_step)
    if seqs_per_step % micro:
        raise SystemExit(f"{name}: {seqs_per_step} sequences per step is not a multiple of micro-batch {micro}")
    device = "cpu" if cpu else "cuda"
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    dtype = torch.float32 if cpu else torch.bfloat16
    if not cpu and spin_s > 0:
        _spin_gpu(spin_s)
    if not cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    attn = "sdpa"
    if spec["trainer"] == "refine":
        from refine.distill.packed_attention import register_varlen_attention

        attn = register_varlen_attention()
    model = _model(shape, device, dtype, attn)
    if spec["rcompile"]:
        for layer in model.model.layers:
            layer.compile()
    make = _trl_trainer if spec["trainer"] == "trl" else _refine_trainer
    trainer = make(
        spec,
        model,
        _tokenizer(),
        rows,
        out_dir=tempfile.mkdtemp(prefix=f"p4-{name}-"),
        seqs_per_step=seqs_per_step,
        micro=micro,
        max_steps=warmup + steps,
        cpu=cpu,
    )
    if spec["lean"] and spec["trainer"] == "trl":
        _lean_loss(trainer, model)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    times: list[float] = []
    trainer.add_callback(_timer_callback(times, sync))
    sync()
    start = time.perf_counter()
    result: dict[str, Any] = {"variant": name, "seqs_per_step": seqs_per_step, "micro_batch": micro}
    prof = None
    try:
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as _profile

            acts = [ProfilerActivity.CPU] + ([] if cpu else [ProfilerActivity.CUDA])
            with _profile(activities=acts) as prof:
                trainer.train()
        else:
            trainer.train()
    except torch.cuda.OutOfMemoryError as exc:
        result.update(oom=True, error=str(exc).splitlines()[0][:200])
        if not cpu:
            result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return result
    total = time.perf_counter() - start
    accum = max(1, len(counter.batches) // (warmup + steps))
    per_step = [counter.batches[i * accum : (i + 1) * accum] for i in range(warmup + steps)]
    measured = per_step[warmup:]
    real = sum(b["real"] for s in measured for b in s)
    computed = sum(b["computed"] for s in measured for b in s)
    secs = times[-1] - times[warmup - 1] if warmup else times[-1] - start
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # forward 2N + backward 4N per token; with frozen base weights the backward skips their weight gradients (2N)
    flops_per_token = 6 * n_params if n_trainable == n_params else 4 * n_params + 2 * n_trainable
    result.update(
        oom=False,
        steps_measured=steps,
        seconds=round(secs, 3),
        real_tokens=real,
        computed_tokens=computed,
        tokens_per_micro_batch=round(computed / max(1, sum(len(s) for s in measured))),
        padding_fraction=round(1 - real / computed, 4),
        real_tokens_per_s=round(real / secs, 1),
        mfu=round(6 * n_params * real / secs / PEAK_FLOPS, 4),
        hardware_flops_utilization=round(flops_per_token * real / secs / PEAK_FLOPS, 4),
        params=n_params,
        trainable_params=n_trainable,
        peak_mem_gib=None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
        peak_reserved_gib=None if cpu else round(torch.cuda.max_memory_reserved() / 2**30, 2),
        total_seconds=round(total, 2),
        step_lengths=[sorted(x for b in s for x in b["lens"]) for s in per_step],
        losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
        final_loss=next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
    )
    if prof is not None:
        result["profile"] = _kernel_profile(prof, total)  # all steps, warm-up included
    return result


def _check_varlen(cpu: bool) -> dict[str, Any]:
    """Packed rows through `refine_varlen` must match each sequence run alone (bf16 on GPU)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from refine.distill.packed_attention import register_varlen_attention, varlen_kernel_available

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


def _ok(r: dict[str, Any]) -> bool:
    return r.get("real_tokens_per_s") is not None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and spread (min-max) of tokens/s and MFU per (seqs/step, variant), losses against the first variant."""
    out = []
    for b in sorted({r["seqs_per_step"] for r in runs}):
        names = list(dict.fromkeys(r["variant"] for r in runs if r["seqs_per_step"] == b))
        ok = {n: [r for r in runs if r["seqs_per_step"] == b and r["variant"] == n and _ok(r)] for n in names}
        ref = next((ok[n][0] for n in names if ok[n] and not parse_variant(n)["bfd"]), None)
        peers = [n for n in names if parse_variant(n)["trainer"] == "trl" and ok[n]]
        best_peer = max(peers, key=lambda n: statistics.median(r["real_tokens_per_s"] for r in ok[n]), default=None)
        for n in names:
            rs = ok[n]
            row: dict[str, Any] = {"seqs_per_step": b, "variant": n, "repeats": len(rs)}
            if not rs:
                row["failed"] = next((r.get("error", "")[-300:] for r in runs if r["variant"] == n), "")
                row["oom"] = any(r.get("oom") for r in runs if r["variant"] == n and r["seqs_per_step"] == b)
                out.append(row)
                continue
            tps = [r["real_tokens_per_s"] for r in rs]
            row.update(
                micro_batch=rs[0]["micro_batch"],
                tok_s_median=round(statistics.median(tps), 1),
                tok_s_min=min(tps),
                tok_s_max=max(tps),
                mfu_median=round(statistics.median(r["mfu"] for r in rs), 4),
                hfu_median=round(statistics.median(r["hardware_flops_utilization"] for r in rs), 4),
                padding_fraction=rs[0]["padding_fraction"],
                peak_mem_gib=max((r["peak_mem_gib"] or 0) for r in rs) or None,
                same_sequences_as_first=ref is not None and rs[0]["step_lengths"] == ref["step_lengths"],
            )
            if ref is not None and ref["losses"] and rs[0]["losses"] and row["same_sequences_as_first"]:
                diffs = [abs(x - y) for x, y in zip(rs[0]["losses"], ref["losses"], strict=False)]
                row["max_step_loss_diff_vs_first"] = round(max(diffs), 5)
            for label, base in (("trl-default", "trl-default"), ("best_trl_peer", best_peer)):
                if base in ok and ok[base] and base != n:
                    base_med = statistics.median(r["real_tokens_per_s"] for r in ok[base])
                    row[f"speedup_vs_{label}"] = round(row["tok_s_median"] / base_med, 3)
            row["best_trl_peer"] = best_peer
            out.append(row)
    return out


def _worker(a: argparse.Namespace) -> None:
    import torch

    if a.cpu:
        torch.set_num_threads(2)
    shape = SHAPES[a.shape]
    rows = make_rows(a.rows, shape["lens"], shape["vocab"])
    r = run_variant(
        a.worker,
        rows,
        shape,
        seqs_per_step=a.seqs,
        steps=a.steps,
        warmup=a.warmup,
        cpu=a.cpu,
        spin_s=a.spin,
        profile=a.profile,
    )
    Path(a.result).write_text(json.dumps(r))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--cpu", action="store_true", help="run on CPU (tiny shape)")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--batches", default="32", help="sequences per optimizer step, comma-separated")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--variants", default="trl-default,trl-tuned-liger-m8,refine-m8")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant; odd repeats go in reverse order")
    p.add_argument("--spin", type=float, default=3.0, help="seconds of GPU matrix products before each run")
    p.add_argument("--budget", type=float, default=0, help="stop starting new runs after this many seconds (0: none)")
    p.add_argument("--run-timeout", type=float, default=400, help="seconds before one run's process is killed")
    p.add_argument("--profile", action="store_true", help="profile every run (kernel classes; slows it down)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seqs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if a.worker:
        _worker(a)
        return {}
    variants = a.variants.split(",")
    for v in variants:
        parse_variant(v)  # bad names fail before any run
    import torch
    import transformers
    import trl

    shape = SHAPES[a.shape]
    rows = make_rows(a.rows, shape["lens"], shape["vocab"])
    env = {
        "device": "cpu" if a.cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "shape": a.shape,
        "rows": a.rows,
        "steps": a.steps,
        "warmup": a.warmup,
        "masked_fraction": round(
            sum(lab == -100 for r in rows for lab in r["labels"]) / sum(len(r["labels"]) for r in rows), 3
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "method": "one fresh process per run; repeats alternate the variant order",
        "argv": sys.argv[1:] if argv is None else argv,
    }
    try:
        from importlib.metadata import version

        import liger_kernel  # noqa: F401

        env["liger_kernel"] = version("liger-kernel")
    except ImportError:
        env["liger_kernel"] = None
    if not a.cpu:
        env["varlen_check"] = _check_varlen(a.cpu)
    print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    plan = []
    for rep in range(a.repeats):
        order = variants if rep % 2 == 0 else variants[::-1]
        plan += [(rep, b, v) for b in (int(x) for x in a.batches.split(",")) for v in order]
    here = Path(__file__).resolve()
    for rep, b, v in plan:
        if a.budget and time.perf_counter() - t0 > a.budget:
            skipped.append(f"{v}@{b}#{rep}")
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            res_path = f.name
        cmd = [sys.executable, str(here), "--worker", v, "--seqs", str(b), "--shape", a.shape, "--rows", str(a.rows)]
        cmd += ["--steps", str(a.steps), "--warmup", str(a.warmup), "--spin", str(a.spin), "--result", res_path]
        cmd += ["--cpu"] if a.cpu else []
        cmd += ["--profile"] if a.profile else []
        t1 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.run_timeout)
            text = Path(res_path).read_text() if proc.returncode == 0 else ""
            failed = {"variant": v, "seqs_per_step": b, "failed": True, "error": proc.stderr[-1500:]}
            r = json.loads(text) if text else failed
        except subprocess.TimeoutExpired:
            r = {"variant": v, "seqs_per_step": b, "failed": True, "error": f"timeout after {a.run_timeout} s"}
        r.update(repeat=rep, process_seconds=round(time.perf_counter() - t1, 1))
        runs.append(r)
        brief = {k: x for k, x in r.items() if k not in ("step_lengths", "losses", "profile")}
        print(json.dumps(brief), flush=True)
    summary = summarize(runs)
    report = {"env": env, "runs": runs, "summary": summary, "skipped": skipped}
    print("\n| seqs/step | variant | micro | real tok/s median (min-max) | MFU | peak GiB | vs default | vs best TRL |")
    for s in summary:
        if "failed" in s:
            why = "out of memory" if s["oom"] else "failed"
            print(f"| {s['seqs_per_step']} | {s['variant']} | - | {why} | | | | |")
            continue
        print(
            f"| {s['seqs_per_step']} | {s['variant']} | {s['micro_batch']} | {s['tok_s_median']:.0f} "
            f"({s['tok_s_min']:.0f}-{s['tok_s_max']:.0f}, n={s['repeats']}) | {s['mfu_median']:.1%} | "
            f"{s['peak_mem_gib']} | {s.get('speedup_vs_trl-default', '-')} | {s.get('speedup_vs_best_trl_peer', '-')} |"
        )
    if skipped:
        print("skipped (budget):", ", ".join(skipped))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
