"""Measure what `refine.executor` costs per item, locally and on Ray, and how far LM-bound work scales.

Two workloads, each on the local thread pool and on a local Ray instance:

* **overhead**: a work function that does nothing but return one ~2 KB record, so the time is the executor's own:
  scheduling, the fsync'ed append to the run store, and for Ray the task round trip and the shard store;
* **lm-bound**: one call per item to a scripted fake LM that sleeps `--latency` seconds (like a remote API), through
  the real DSPy ChatAdapter path, so the number is the calls/s the executor sustains at a given concurrency.

Usage (on a shared machine, under the CPU lock):
    flock /tmp/refine-cpu.lock python examples/ray/scaleout_bench.py --items 400 --lm-items 640 --latency 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Any

from refine.executor import Emit, WorkerLM, run_items

PAYLOAD = "x" * 2000


def noop_work(item: dict[str, Any]) -> list[Emit]:
    return [Emit("accepted", item["key"], {"payload": PAYLOAD})]


def bench_lm(spec: str, latency: float = 0.1) -> Any:
    from refine.testing import ScriptedLM

    return ScriptedLM(lambda fields, inputs, messages: {"answer": inputs.get("question", "")[::-1]}, latency=latency)


def lm_work(item: dict[str, Any]) -> list[Emit]:
    import dspy

    pred = dspy.Predict("question -> answer")(question=item["question"])
    return [Emit("accepted", item["key"], {"answer": pred.answer})]


def synth_costs(n: int) -> dict[str, Any]:
    """The real AgentRefine synthesis path with the tests' scripted teacher at zero latency: calls per item, the
    client-side CPU per item (DSPy adapters, verification, run store), prompt sizes in tokens, verification cost."""
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the scripted teacher lives in tests/
    from refine.data import Trajectory
    from refine.lm import embedded_model_dir
    from refine.synth import SynthConfig, run_synth
    from refine.verify import verify_trajectory
    from tests.test_synth_support import make_lm

    lm = make_lm()
    run = tempfile.mkdtemp(prefix="refine-bench-") + "/run"
    t0 = time.perf_counter()
    totals = run_synth(SynthConfig(n=n, lm="py:tests.test_synth_support:make_lm", workers=1), run, lm=lm)
    dt = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    prompt_tokens, output_tokens = [], []
    for entry in lm.history:
        text = "\n".join(str(m.get("content", "")) for m in entry.get("messages") or [])
        prompt_tokens.append(len(tok(text).input_ids))
        output_tokens.append(sum(len(tok(str(o)).input_ids) for o in entry.get("outputs") or []))
    from refine.store import RunStore

    trajs = [Trajectory.model_validate(r["trajectory"]) for r in RunStore.open_existing(run).records("accepted")]
    t1 = time.perf_counter()
    for _ in range(20):
        for t in trajs:
            verify_trajectory(t)
    verify_ms = (time.perf_counter() - t1) / (20 * max(1, len(trajs))) * 1000
    return {
        "items": n,
        "accepted": totals["accepted"],
        "lm_calls_per_item": round(totals["lm_calls"] / n, 2),
        "client_cpu_ms_per_item": round(dt / n * 1000, 1),
        "client_cpu_ms_per_call": round(dt / max(1, totals["lm_calls"]) * 1000, 2),
        "prompt_tokens_per_call_mean": round(sum(prompt_tokens) / max(1, len(prompt_tokens))),
        "prompt_tokens_per_call_max": max(prompt_tokens, default=0),
        "output_tokens_per_call_mean (fixture-sized)": round(sum(output_tokens) / max(1, len(output_tokens))),
        "verify_ms_per_trajectory": round(verify_ms, 3),
    }


def _time(items: list[dict[str, Any]], work: Any, **kw: Any) -> dict[str, Any]:
    run = tempfile.mkdtemp(prefix="refine-bench-") + "/run"
    t0 = time.perf_counter()
    s = run_items(items, work, store=run, **kw)
    dt = time.perf_counter() - t0
    if s.pending:
        raise RuntimeError(f"{s.pending} items not done")
    return {"items": len(items), "seconds": round(dt, 3), "items_per_s": round(len(items) / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--lm-items", type=int, default=640)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--synth-items", type=int, default=24, help="items of the synthesis cost probe (0: skip)")
    args = ap.parse_args()
    import ray

    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    if args.synth_items:
        results["synthesis costs (scripted teacher, 1 thread)"] = synth_costs(args.synth_items)
    items = [{"key": f"i{i}"} for i in range(args.items)]
    results["overhead local x1"] = _time(items, noop_work, workers=1)
    results["overhead local x8"] = _time(items, noop_work, workers=8)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="WARNING")
    results["ray init seconds"] = round(time.perf_counter() - t0, 2)
    # warm the worker processes once so that process start-up is not counted per item
    _time(items[:8], noop_work, executor="ray", workers=args.ray_cpus)
    results[f"overhead ray x{args.ray_cpus}"] = _time(items, noop_work, executor="ray", workers=args.ray_cpus)

    lm_items = [{"key": f"q{i}", "question": f"what is item {i}?"} for i in range(args.lm_items)]
    lm = WorkerLM("bench", factory=bench_lm, latency=args.latency)
    for threads in (8, 32):
        r = _time(lm_items, lm_work, workers=threads, lm=lm)
        r["ideal_items_per_s"] = round(threads / args.latency, 1)
        results[f"lm-bound local x{threads} (latency {args.latency}s)"] = r
    per = 32 // args.ray_cpus
    # warm-up: each worker imports DSPy and builds its LM once (~1-2 s, paid once per worker process per run)
    warm = [{"key": f"w{i}", "question": "warm"} for i in range(2 * 32)]
    results["ray lm warm-up seconds (first items, imports + LM build)"] = _time(
        warm, lm_work, executor="ray", workers=args.ray_cpus, threads_per_worker=per, lm=lm
    )["seconds"]
    r = _time(lm_items, lm_work, executor="ray", workers=args.ray_cpus, threads_per_worker=per, lm=lm)
    r["ideal_items_per_s"] = round(32 / args.latency, 1)
    results[f"lm-bound ray x{args.ray_cpus} tasks x {per} threads (latency {args.latency}s)"] = r
    ray.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
