"""P2: runtime overhead of a `ProgramGraph` over the same DSPy calls made in a plain Python loop.

A chain of N `dspy.Predict` nodes runs on a zero-latency in-process LM (an engine returning a fixed ChatAdapter
answer), so everything measured is framework time: DSPy's adapter/LM path on both sides, plus the graph runtime
(state, edges, trace isolation, events) on one. Both sides run interleaved in the same process; best-of-N wall time.
Goal: graph / loop <= 1.3x.

Usage:
    python benchmarks/bench_p2_graph.py                    # 5 nodes, 300 runs x 7 repeats
    python benchmarks/bench_p2_graph.py --nodes 5 --runs 500 --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import dspy
from dspy.lm15 import Message, Request, Response, Usage

from refine.graph import ProgramGraph

__all__ = ["ZeroLatencyEngine", "build_graph", "build_loop", "main"]

ANSWER = "[[ ## out ## ]]\nnext value\n\n[[ ## completed ## ]]"


class ZeroLatencyEngine:
    """A `dspy.LM` engine that answers every request instantly with the same ChatAdapter-formatted text."""

    def complete(self, request: Request) -> Response:
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(ANSWER),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )

    def close(self) -> None:
        return None


def build_graph(n: int) -> Callable[[str], str]:
    """`n` chained Predict nodes: node i's `out` feeds node i+1's `text` through an edge mapping."""
    g = ProgramGraph("chain", inputs=["text"], outputs=["out"])
    for i in range(n):
        g.add_node(f"step{i}", dspy.Predict("text -> out"))
        if i:
            g.add_edge(f"step{i - 1}", f"step{i}", mapping={"text": "out"})
    prog = g.compile()
    return lambda text: prog(text=text).out


def build_loop(n: int) -> Callable[[str], str]:
    """The same `n` Predict calls, chained by hand."""
    steps = [dspy.Predict("text -> out") for _ in range(n)]

    def run(text: str) -> str:
        for step in steps:
            text = step(text=text).out
        return text

    return run


def _time(fn: Callable[[str], str], runs: int) -> float:
    t0 = time.perf_counter()
    for i in range(runs):
        fn(f"input {i}")
    return (time.perf_counter() - t0) / runs


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return (and print) its results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300, help="graph runs per timing")
    ap.add_argument("--repeats", type=int, default=7, help="timings per side; the best counts")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    lm = dspy.LM("zero/latency", engine=ZeroLatencyEngine(), cache=False)
    sides = {"loop": build_loop(args.nodes), "graph": build_graph(args.nodes)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    # trace=None and history off on both sides: neither an unbounded global trace nor LM history distorts timings.
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(), trace=None, disable_history=True):
        for fn in sides.values():
            assert fn("warm up") == "next value"
            _time(fn, max(10, args.runs // 10))
        for _ in range(args.repeats):
            for name, fn in sides.items():  # interleaved, so drifts in machine load hit both sides
                times[name].append(_time(fn, args.runs))
    best = {k: min(v) for k, v in times.items()}
    result = {
        "benchmark": "P2 graph overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        "dspy": dspy.__version__,
        "nodes": args.nodes,
        "runs": args.runs,
        "repeats": args.repeats,
        "loop_ms_best": best["loop"] * 1e3,
        "graph_ms_best": best["graph"] * 1e3,
        "loop_ms_median": statistics.median(times["loop"]) * 1e3,
        "graph_ms_median": statistics.median(times["graph"]) * 1e3,
        "overhead_ratio_best": best["graph"] / best["loop"],
        "graph_us_per_node_overhead": (best["graph"] - best["loop"]) / args.nodes * 1e6,
    }
    print(f"{'side':<6} {'best ms/run':>12} {'median ms/run':>14}")
    for name in sides:
        print(f"{name:<6} {best[name] * 1e3:>12.3f} {statistics.median(times[name]) * 1e3:>14.3f}")
    print(
        f"overhead ratio (best graph / best loop): {result['overhead_ratio_best']:.3f}x "
        f"({result['graph_us_per_node_overhead']:.1f} us per node); goal <= 1.3x"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
