"""Benchmark P3: synthesis throughput against an OpenAI-compatible LM server with fixed latency.

A fake OpenAI-compatible server (aiohttp, loopback, a separate process) answers every chat completion after a fixed
delay (default 100 ms) with a valid DSPy ChatAdapter answer for whatever signature was asked. Clients go through the
real `dspy.LM("openai/...", api_base=...)` path (DSPy's engine, HTTP, parsing; cache off). Ideal throughput is
workers / latency (32 / 0.1 s = 320 calls/s); the target is >= 90% of it.

Modes:
    qa     N calls of `dspy.Predict("question -> answer")` from a pool of `--workers` threads.
    synth  `refine.synth.run_synth` (AgentRefinePipeline, `--workers` parallel items) into a temporary run dir.
    kill   kill -9 / resume trials of `refine synth` with a fake in-process LM (more trials than the test suite).

Usage (from the repository root):
    python benchmarks/bench_p3_server.py --mode qa --calls 3200 --workers 32 --latency 0.1
    python benchmarks/bench_p3_server.py --mode synth --items 256 --workers 32 --latency 0.1
    python benchmarks/bench_p3_server.py --mode kill --trials 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_FIELDS = re.compile(r"Your output fields are:\n(.*?)(?:\n\n|\Z)", re.S)
_FIELD = re.compile(r"^\d+\.\s+`([^`]+)`", re.M)
_INPUT = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)


def _answer(messages: list[dict]) -> str:
    """A ChatAdapter answer for the request's signature (the tests' fake teacher for the synthesis signatures)."""
    from tests.test_synth_support import perfect_teacher

    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if isinstance(system, list):
        system = "".join(p.get("text", "") for p in system)
    if isinstance(user, list):
        user = "".join(p.get("text", "") for p in user)
    block = _FIELDS.search(system)
    fields = _FIELD.findall(block.group(1)) if block else ["answer"]
    inputs = {k: v.strip() for k, v in _INPUT.findall(user)}
    values = perfect_teacher(fields, inputs, messages) if fields != ["answer"] else {"answer": "42"}
    parts = [f"[[ ## {f} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for f, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def serve(port: int, latency: float) -> None:
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(latency)
        text = _answer(body.get("messages", []))
        n_in = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {
                    "prompt_tokens": n_in,
                    "completion_tokens": len(text.split()),
                    "total_tokens": n_in + len(text.split()),
                },
            }
        )

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(latency: float) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--latency", str(latency)])
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake LM server did not start")


def _lm(port: int):
    import dspy

    return dspy.LM(
        "openai/fake-model",
        api_base=f"http://127.0.0.1:{port}/v1",
        api_key="sk-fake-benchmark",
        cache=False,
        num_retries=0,
        max_tokens=4000,
    )


def bench_qa(port: int, calls: int, workers: int) -> dict:
    import dspy

    lm = _lm(port)
    predict = dspy.Predict("question -> answer")

    def one(i: int) -> str:
        with dspy.context(lm=lm):
            return predict(question=f"What is {i} + {i}?").answer

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers * 2)))  # warm-up: connections, imports
        t0 = time.perf_counter()
        answers = list(pool.map(one, range(calls)))
        wall = time.perf_counter() - t0
    assert all(a == "42" for a in answers)
    return {"calls": calls, "wall_s": round(wall, 3), "calls_per_s": round(calls / wall, 1)}


def bench_synth(port: int, items: int, workers: int) -> dict:
    from refine.synth import SynthConfig, run_synth

    lm = _lm(port)
    out = Path(tempfile.mkdtemp()) / "run"
    t0, c0 = time.perf_counter(), time.process_time()
    totals = run_synth(SynthConfig(n=items, lm="openai/fake-model", workers=workers), out, lm=lm)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    secs = [json.loads(line)["seconds"] for line in (out / "accepted.jsonl").open()]
    return {
        "items": items,
        "accepted": totals["accepted"],
        "lm_calls": totals["lm_calls"],
        "wall_s": round(wall, 3),
        "calls_per_s": round(totals["lm_calls"] / wall, 1),
        "mean_item_s": round(sum(secs) / len(secs), 3),  # ideal: 2 calls x latency
        "client_cpu_ms_per_item": round(cpu / items * 1000, 2),  # the GIL-bound share of the client
    }


def bench_kill(trials: int) -> dict:
    from refine.synth import SynthConfig, run_synth
    from tests.test_reliability import _ids, kill_and_resume_trial
    from tests.test_synth_support import make_lm

    tmp = Path(tempfile.mkdtemp())
    run_synth(SynthConfig(n=12, lm="py:tests.test_synth_support:make_lm", workers=2), tmp / "base", lm=make_lm())
    base = _ids(tmp / "base")
    ok = 0
    delays = []
    for t in range(trials):
        d = tmp / f"t{t}"
        d.mkdir()
        delays.append(kill_and_resume_trial(d, random.Random(t)))
        run = next(d.glob("run*"))
        lines = [
            json.loads(x)["key"]
            for k in ("accepted", "rejected")
            if (run / f"{k}.jsonl").exists()
            for x in (run / f"{k}.jsonl").read_text().splitlines()
        ]
        ok += int(_ids(run) == base and len(lines) == len(set(lines)))
    return {
        "trials": trials,
        "identical_to_uninterrupted": ok,
        "kill_delay_s": [round(min(delays), 2), round(max(delays), 2)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=["qa", "synth", "kill"], default="qa")
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--calls", type=int, default=3200)
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3, help="best of N runs (the machine is shared)")
    args = p.parse_args()
    if args.serve:
        serve(args.port, args.latency)
        return
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.mode == "kill":
        print(json.dumps(bench_kill(args.trials)))
        return
    server, port = _start_server(args.latency)
    try:
        ideal = args.workers / args.latency
        runs = []
        for _ in range(args.repeat):
            r = (
                bench_qa(port, args.calls, args.workers)
                if args.mode == "qa"
                else bench_synth(port, args.items, args.workers)
            )
            r["efficiency"] = round(r["calls_per_s"] / ideal, 3)
            runs.append(r)
            print(json.dumps(r), flush=True)
        best = max(runs, key=lambda r: r["calls_per_s"])
        print(
            json.dumps(
                {
                    "mode": args.mode,
                    "workers": args.workers,
                    "latency_s": args.latency,
                    "ideal_calls_per_s": ideal,
                    "best": best,
                }
            )
        )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
