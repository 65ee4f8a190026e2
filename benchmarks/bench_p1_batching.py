"""Benchmark P1: 16 concurrent structured DSPy calls through the embedded LM, micro-batched vs one at a time.

Both modes use the same loaded model, the same grammar-constrained GrammarChatAdapter, the same inputs and greedy
decoding; the only difference is the engine's `max_batch` (16 vs 1). DSPy's cache is off. Tokens/s counts the
completion tokens of all calls over the wall time of the whole `module.batch(...)` call.

Run (on a shared machine, under the CPU lock):

    flock /tmp/refine-cpu.lock python benchmarks/bench_p1_batching.py --calls 16 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from refine.lm import GrammarChatAdapter, LocalEngine, load_model
from refine.lm.check import NextStep

SITUATIONS = [
    "You are in a kitchen with a fridge 1, a sink 1 and a table 1. Your task is to put a cold apple on the table.",
    "You are in a bathroom with a towel 1 and a sink 1. Your task is to clean the soap bar and put it in the cabinet.",
    "You are in a living room with a sofa 1 and a lamp 1. Your task is to turn on the lamp and read a book.",
    "You are in a garden with a shed 1 and a hose 1. Your task is to water the roses.",
    "You are in an office with a desk 1 and a printer 1. Your task is to print the report and put it on the desk.",
    "You are in a bedroom with a bed 1 and a drawer 1. Your task is to find the keys and put them in the drawer.",
    "You are in a garage with a car 1 and a toolbox 1. Your task is to take the wrench and fix the bike.",
    "You are in a lab with a microscope 1 and a fridge 1. Your task is to cool the sample and inspect it.",
]


def run_mode(engine: LocalEngine, examples: list[dspy.Example], max_tokens: int) -> dict[str, float]:
    """Answer every example concurrently through `engine`; return wall time, tokens and batch sizes."""
    lm = dspy.LM("embedded", engine=engine, cache=False, max_tokens=max_tokens, temperature=0.0)
    program = dspy.Predict(NextStep)
    before = len(engine.batches)
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=GrammarChatAdapter(), track_usage=True):
        results = program.batch(
            examples, num_threads=len(examples), disable_progress_bar=True, max_errors=len(examples)
        )
    wall = time.perf_counter() - started
    batches = list(engine.batches)[before:]
    tokens = sum(b.output_tokens for b in batches)
    parsed = sum(1 for r in results if r is not None)
    return {
        "wall_s": wall,
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "parsed": parsed,
        "calls": len(examples),
        "batch_sizes": [b.size for b in batches],
        "generate_s": sum(b.seconds for b in batches),
        "grammar_s": sum(b.grammar_seconds for b in batches),
        "answers": [r.next_action if r is not None else None for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default min(2, cpus))")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode; the best is reported")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    loaded = load_model("embedded", dtype=args.dtype, torch_threads=args.threads)
    loaded.ll_tokenizer()
    load_s = time.perf_counter() - started
    import torch

    examples = [
        dspy.Example(situation=f"{SITUATIONS[i % len(SITUATIONS)]} (episode {i})").with_inputs("situation")
        for i in range(args.calls)
    ]
    batched = LocalEngine(max_batch=args.calls, batch_wait_ms=20, dtype=args.dtype, torch_threads=args.threads)
    single = LocalEngine(max_batch=1, batch_wait_ms=0, dtype=args.dtype, torch_threads=args.threads)
    run_mode(batched, examples[:2], args.max_tokens)  # warm-up: first generate() call, grammar machinery
    runs: dict[str, list[dict]] = {"batched": [], "one_at_a_time": []}
    for _ in range(args.repeats):
        runs["batched"].append(run_mode(batched, examples, args.max_tokens))
        runs["one_at_a_time"].append(run_mode(single, examples, args.max_tokens))
    best = {mode: max(results, key=lambda r: r["tokens_per_s"]) for mode, results in runs.items()}
    ratio = best["batched"]["tokens_per_s"] / best["one_at_a_time"]["tokens_per_s"]
    same = sum(a == b for a, b in zip(best["batched"]["answers"], best["one_at_a_time"]["answers"], strict=True))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "calls": args.calls,
        "max_tokens": args.max_tokens,
        "load_s": round(load_s, 2),
        "ratio": round(ratio, 2),
        "identical_answers": f"{same}/{args.calls}",
        "all_tokens_per_s": {mode: [round(r["tokens_per_s"], 1) for r in rs] for mode, rs in runs.items()},
    }
    for mode, result in best.items():
        report[mode] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k != "answers"}
    print(json.dumps(report, indent=2))
    print(
        f"\nP1: batched {best['batched']['tokens_per_s']:.1f} tok/s vs one-at-a-time "
        f"{best['one_at_a_time']['tokens_per_s']:.1f} tok/s -> {ratio:.2f}x "
        f"(parsed {best['batched']['parsed']}/{args.calls} and {best['one_at_a_time']['parsed']}/{args.calls}; "
        f"median batch {statistics.median(best['batched']['batch_sizes'])})"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
