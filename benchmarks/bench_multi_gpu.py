"""Multi-GPU distillation: the P4 model and data under `accelerate launch` (FSDP / DDP), per-GPU throughput and loss.

Run once per world size on the same machine and compare (same global batch = sequences per optimizer step):

    accelerate launch --num_processes 1 benchmarks/bench_multi_gpu.py --out one.json
    accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 benchmarks/bench_multi_gpu.py \\
        --out two.json
    accelerate launch --config_file examples/accelerate/cpu_2proc.yaml benchmarks/bench_multi_gpu.py --shape tiny --cpu

Each rank counts its real (non-padding) tokens; rank 0 reports the global tokens/s, tokens/s per GPU, MFU per GPU
(6·N·tokens/s/GPU over 989 TFLOP/s) and the loss of every optimizer step (to check the curves agree across sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_p4_gpu import PEAK_FLOPS, SHAPES, _Counter, _model, _timer_callback, _tokenizer, make_rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--seqs-per-step", type=int, default=32, help="global sequences per optimizer step")
    p.add_argument("--micro", type=int, default=8, help="sequences per GPU per micro-batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    from refine.distill.config import DistillConfig
    from refine.distill.packed_attention import register_varlen_attention
    from refine.distill.trainer import make_trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not a.cpu:
        torch.cuda.set_device(local)
    else:
        torch.set_num_threads(1)
    micro = min(a.micro, a.seqs_per_step // world)
    accum = a.seqs_per_step // (micro * world)
    if micro * accum * world != a.seqs_per_step:
        raise SystemExit(f"--seqs-per-step {a.seqs_per_step} is not divisible into {world} x {micro} x k")
    shape = SHAPES[a.shape]
    rows = make_rows(a.rows, shape["lens"], shape["vocab"])
    dtype = torch.float32 if a.cpu else torch.bfloat16
    model = _model(shape, "cpu" if a.cpu else f"cuda:{local}", dtype, register_varlen_attention())
    n_params = sum(p.numel() for p in model.parameters())  # before FSDP shards it
    cfg = DistillConfig(
        out=Path(tempfile.mkdtemp(prefix="mgpu-")),
        batch_size=micro,
        grad_accum=accum,
        max_steps=a.warmup + a.steps,
        learning_rate=1e-4,
        gradient_checkpointing=False,
        padding_free=True,
        bf16=not a.cpu,
        logging_steps=1,
        warmup_ratio=0.0,
        seed=0,
        torch_compile=a.compile,
    )
    trainer = make_trainer(model, _tokenizer(shape["vocab"]), rows, cfg, padding_free=True, bf16=not a.cpu)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    times: list[float] = []
    sync = (lambda: None) if a.cpu else torch.cuda.synchronize
    trainer.add_callback(_timer_callback(times, sync))
    start = time.perf_counter()
    trainer.train()
    per_step = len(counter.batches) // (a.warmup + a.steps)
    real = sum(b["real"] for b in counter.batches[a.warmup * per_step :])
    secs = times[-1] - times[a.warmup - 1]
    totals = torch.tensor([float(real)], device="cpu" if a.cpu else f"cuda:{local}")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    result = {
        "world_size": world,
        "device": "cpu" if a.cpu else torch.cuda.get_device_name(local),
        "seqs_per_step": a.seqs_per_step,
        "micro_batch_per_gpu": micro,
        "grad_accum": accum,
        "steps_measured": a.steps,
        "seconds": round(secs, 3),
        "real_tokens_per_s": round(float(totals[0]) / secs, 1),
        "real_tokens_per_s_per_gpu": round(float(totals[0]) / secs / world, 1),
        "mfu_per_gpu": round(6 * n_params * float(totals[0]) / secs / world / PEAK_FLOPS, 4),
        "params": n_params,
        "peak_mem_gib": None if a.cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h],
        "total_seconds": round(time.perf_counter() - start, 1),
        "compile": a.compile,
    }
    if rank == 0:
        print(json.dumps(result), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
