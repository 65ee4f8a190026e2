"""Why the engine runs all its torch work on one thread: a linear layer's speed with one OpenMP pool vs two.

libgomp gives every thread that starts a parallel region its own pool of helper threads; once the helpers of all pools
outnumber the CPUs, idle helpers sleep on a futex instead of spinning, and each parallel region pays a wake-up. This
harness times one SmolLM2-sized linear (576 -> 1536, float32) through MKL (`F.linear`) and oneDNN
(`aten::mkldnn_linear`) for 1, 16, 64 and 800 rows, in a fresh process per setting, side by side:

* `main`: in the main thread;
* `worker_beside_main_pool`: in a second thread after the main thread has run a parallel op (two pools: the engine's
  layout before `refine.lm.compute`, model loaded in the caller's thread, run in a batcher thread);
* `worker_alone`: in a second thread, the main thread never having started a pool (the compute thread's layout).

Run (on a shared machine, under the CPU lock):

    flock /tmp/refine-cpu.lock python benchmarks/bench_openmp_pools.py --reps 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

SETTINGS = ("main", "worker_beside_main_pool", "worker_alone")
ROWS = (1, 16, 64, 800)


def _time_ms(fn, x, reps: int) -> float:
    for _ in range(3):
        fn(x)
    started = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return round((time.perf_counter() - started) / reps * 1e3, 4)


def measure(setting: str, reps: int, threads: int) -> dict:
    """Timings (ms per call) for one setting, in this process."""
    import torch

    torch.manual_seed(0)
    result: dict = {}

    def work() -> None:
        torch.set_num_threads(threads)
        weight = torch.randn(1536, 576)
        packed = weight.to_mkldnn()
        with torch.inference_mode():
            for rows in ROWS:
                x = torch.randn(rows, 576)
                n = reps if rows < 100 else max(10, reps // 10)
                result[str(rows)] = {
                    "mkl": _time_ms(lambda a: torch.nn.functional.linear(a, weight), x, n),
                    "onednn": _time_ms(
                        lambda a: torch.ops.aten.mkldnn_linear(a.to_mkldnn(), packed, None).to_dense(), x, n
                    ),
                }

    if setting == "main":
        work()
        return result
    if setting == "worker_beside_main_pool":
        torch.set_num_threads(threads)
        (torch.randn(2_000_000) * 2).sum()  # a parallel op: the main thread now has a pool
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)  # internal: one child process
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(measure(args.setting, args.reps, args.threads)))
        return
    results = {}
    for setting in SETTINGS:  # a fresh process each: a pool, once started, lives as long as its thread
        out = subprocess.run(
            [sys.executable, __file__, "--setting", setting, "--reps", str(args.reps), "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "threads": args.threads,
        "ms_per_call": results,
    }
    print(json.dumps(report, indent=2))
    print("\n| rows | " + " | ".join(f"{s} MKL | {s} oneDNN" for s in SETTINGS) + " |")
    for rows in ROWS:
        cells = [f"{results[s][str(rows)]['mkl']:.3f} | {results[s][str(rows)]['onednn']:.3f}" for s in SETTINGS]
        print(f"| {rows} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
