"""Per-layer cost of full fine-tuning a Llama-3-8B-shaped model at 8,192 tokens on one GPU, for docs/scaling.md.

An 8B model with AdamW does not fit one 80 GB GPU (16 bytes/parameter), so this trains the real 8B layer shape
(hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocab 128256, untied head) with fewer layers, full fine-tuning
(bf16 weights, fused AdamW, SDPA attention, loss over a 50%-masked label row), and fits
`step time = fixed + per_layer * layers` over several depths; 32 layers then gives the 8B step time. FSDP on 8
GPUs splits the same work 8 ways (the all-gathers overlap with compute; see docs/scaling.md).

No weights and no network needed: random init, random tokens. Usage (on a CUDA machine):
    python benchmarks/bench_scaleout_gpu.py --layers 2 4 8 --seq 8192 --steps 6 > out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any


def measure(layers: int, seq: int, steps: int, warmup: int, checkpointing: bool) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=seq,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (1, seq), device="cuda")
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # masked turns: the loss covers half the tokens, the compute covers all
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, ids, labels, loss
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "layers": layers,
        "checkpointing": checkpointing,
        "params": n_params,
        "step_s": round(step, 4),
        "tokens_per_s": round(seq / step, 1),
        "peak_gib": round(peak, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    import torch

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "seq": args.seq,
        "runs": [],
    }
    for ckpt in (False, True):
        for layers in args.layers:
            try:
                out["runs"].append(measure(layers, args.seq, args.steps, args.warmup, ckpt))
            except torch.cuda.OutOfMemoryError:
                out["runs"].append({"layers": layers, "checkpointing": ckpt, "error": "out of memory"})
                gc.collect()
                torch.cuda.empty_cache()
            print(json.dumps(out["runs"][-1]), flush=True)
    for ckpt in (False, True):
        pts = [(r["layers"], r["step_s"]) for r in out["runs"] if r.get("checkpointing") == ckpt and "step_s" in r]
        if len(pts) >= 2:
            xs, ys = zip(*pts, strict=True)
            mx, my = statistics.mean(xs), statistics.mean(ys)
            slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
            fixed = my - slope * mx
            step32 = fixed + 32 * slope
            n32 = 32 * 218_112_000 + 2 * 128256 * 4096 + 4096  # Llama-3-8B: 8.03e9 parameters
            flops = 6 * n32 * args.seq + 6 * 32 * args.seq * args.seq * 4096  # 6N per token + causal attention
            out[f"fit_ckpt={ckpt}"] = {
                "fixed_s": round(fixed, 4),
                "per_layer_s": round(slope, 4),
                "step_32_layers_s": round(step32, 3),
                "tokens_per_s_8b_one_gpu_equivalent": round(args.seq / step32, 1),
                "mfu_vs_989_tflops": round(flops / step32 / 989e12, 3),
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
