"""Benchmark P5: evaluation episodes per minute, batched-parallel vs sequential, with the embedded model.

All modes play the same episodes (same environments, seeds and step bound) with the same `ChatAgent` on the same
loaded embedded model (SmolLM2-135M-Instruct, greedy, DSPy cache off). Sequential = one worker, so the engine sees
one request at a time; parallel = `--workers` threads, whose concurrent LM calls the engine micro-batches into one
forward pass. Environments are warmed first (TextWorld games generated and cached, BabyAI/PDDL imported) so that
neither mode pays one-off costs the other does not; each mode still starts its own environment instances (e.g. a
ScienceWorld JVM per worker that needs one).

Run (on a shared machine, under the CPU lock):

    flock /tmp/refine-cpu.lock python benchmarks/bench_p5_eval.py --episodes 8 --max-steps 3 --max-tokens 32 \\
        --workers 8,16,32
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def run_mode(agent, envs: list[str], episodes: int, max_steps: int, workers: int, engine) -> dict:
    from refine.eval import EvalConfig, evaluate

    cfg = EvalConfig(
        envs=envs,
        episodes=episodes,
        max_steps=max_steps,
        workers=workers,
        env_options={"textworld": {"tasks": ["cooking", "simple"]}},
    )
    before = len(engine.batches)
    started = time.perf_counter()
    res = evaluate(agent, cfg)
    wall = time.perf_counter() - started
    batches = list(engine.batches)[before:]
    sizes = collections.Counter(b.size for b in batches)
    overall = res.summary["overall"]["base"]
    return {
        "workers": workers,
        "episodes": len(res.records),
        "steps": sum(r["steps"] for r in res.records),
        "wall_s": round(wall, 2),
        "episodes_per_min": round(60 * len(res.records) / wall, 2),
        "lm_calls": sum(sizes[k] * k for k in sizes),
        "generate_calls": len(batches),
        "mean_batch": round(sum(b.size for b in batches) / max(1, len(batches)), 2),
        "batch_sizes": dict(sorted(sizes.items())),
        "lm_seconds": round(sum(b.seconds for b in batches), 2),
        "output_tokens": sum(b.output_tokens for b in batches),
        "prompt_tokens": sum(b.prompt_tokens for b in batches),
        "reused_prompt_tokens": sum(b.prefix_tokens for b in batches),
        "rows_prefilled_before_decoding": sum(b.prefilled_rows for b in batches),
        "prefill_passes": sum(b.prefill_passes for b in batches),
        "success_rate": overall["success_rate"],
        "progress_rate": round(overall["progress_rate"], 4),
        "invalid_rate": round(overall["invalid_rate"], 4),
        "errors": overall["errors"],
        "actions": {f"{r['env']}#{r['index']}": [s["action"] for s in r["trajectory"]] for r in res.records},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="babyai,scienceworld,pddl,textworld")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per environment")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--workers", default="8", help="parallel worker counts to measure, comma-separated")
    parser.add_argument("--threads", default="2", help="torch thread counts of the parallel modes, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--no-prefix-cache", action="store_true", help="recompute every prompt (no KV reuse)")
    args = parser.parse_args()
    envs = [e for e in args.envs.split(",") if e]
    workers_list = [int(w) for w in args.workers.split(",") if w]
    threads_list = [int(t) for t in args.threads.split(",") if t]
    os.environ.setdefault("REFINE_CACHE", os.path.join(tempfile.gettempdir(), "refine-bench-p5"))

    from refine.envs import make_env
    from refine.lm import get_lm
    from refine.programs.agent import ChatAgent

    # Warm-up: model load + one call, and each environment's first reset (imports, game generation).
    lm = get_lm("embedded", max_tokens=args.max_tokens, temperature=0.0, cache=False, max_batch=max(16, *workers_list))
    engine = lm.engine
    t0 = time.perf_counter()
    lm("Say hello.")
    load_s = time.perf_counter() - t0
    for name in envs:
        opts = {"tasks": ["cooking", "simple"]} if name == "textworld" else {}
        env = make_env(name, max_steps=args.max_steps, **opts)
        for i in range(args.episodes):
            env.reset(seed=i)
        getattr(env, "close", lambda: None)()
    agent = ChatAgent(lm, max_turns=4)
    from refine.lm.loader import load_model

    loaded = load_model(lm.model)
    if args.no_prefix_cache:
        loaded.prefix_cache_entries = 0  # the engine before per-turn KV reuse (the system turn is not reused either)

    from refine.lm.loader import set_torch_threads

    # torch's intra-op threads spin on both cores; any environment work running beside a batch (a JVM, the BabyAI
    # bot, pddlgym) then stalls them. With one torch thread the other core is left to the environments.
    modes = {}
    runs = [(f"parallel_{w}_workers_{t}_threads", w, t) for w in workers_list for t in threads_list]
    for name, workers, threads in [*runs, ("sequential_2_threads", 1, 2)]:
        set_torch_threads(threads)
        loaded.prefix_cache.clear()  # every mode starts cold: no KV kept from an earlier mode's episodes
        modes[name] = run_mode(agent, envs, args.episodes, args.max_steps, workers, engine)
        modes[name]["torch_threads"] = threads
    sequential = modes["sequential_2_threads"]
    parallel = max((m for k, m in modes.items() if k.startswith("parallel")), key=lambda m: m["episodes_per_min"])
    same = sum(parallel["actions"][k] == sequential["actions"][k] for k in parallel["actions"])
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "envs": envs,
        "episodes_per_env": args.episodes,
        "max_steps": args.max_steps,
        "max_tokens": args.max_tokens,
        "prefix_cache": not args.no_prefix_cache,
        "model_load_and_first_call_s": round(load_s, 2),
        **{name: {k: v for k, v in m.items() if k != "actions"} for name, m in modes.items()},
        "speedup_vs_sequential": {
            k: round(m["episodes_per_min"] / sequential["episodes_per_min"], 2) for k, m in modes.items()
        },
        "speedup_best_parallel_vs_sequential": round(parallel["episodes_per_min"] / sequential["episodes_per_min"], 2),
        "episodes_with_identical_actions": f"{same}/{len(parallel['actions'])}",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
