"""LM calls, tokens and wall time of `refine optimize` per method and preset, estimated vs measured.

Default: the Self-Refine program on the scripted fake LM of the tests (answers improve with instructions/demos),
so the numbers are the optimizers' own budgets, not model speed. `--lm embedded` measures wall time on the embedded
model instead (run it under the CPU lock: `flock /tmp/refine-cpu.lock python benchmarks/bench_optimize_budget.py
--lm embedded --methods bootstrap --presets light --train 4 --dev 4`).

Usage:
    python benchmarks/bench_optimize_budget.py [--train 20] [--dev 10] [--methods bootstrap,mipro,gepa]
        [--presets light,medium,heavy] [--program self_refine] [--lm fake|embedded|MODEL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.test_optimize_support


def _lm(spec: str, max_tokens: int) -> Any:
    if spec == "fake":
        from tests.test_optimize_support import make_lm

        return make_lm(max_tokens=max_tokens)
    from refine.lm import get_lm

    return get_lm(spec, max_tokens=max_tokens)


def _rows(program: str, n: int, start: int) -> list[dict[str, Any]]:
    if program == "self_refine":
        from tests.test_optimize_support import arith_rows

        return arith_rows(n, start)
    if program == "reflexion":
        return [{"task": "Leave the room through the door."} for _ in range(n)]
    return [{"persona": f"persona {i}: a person who likes puzzle {i}"} for i in range(start, start + n)]


def run_one(
    program: str,
    method: str,
    preset: str,
    lm: str,
    n_train: int,
    n_dev: int,
    max_tokens: int,
    options: dict[str, Any],
    num_threads: int = 1,
    max_calls: int | None = None,
) -> dict[str, Any]:
    from refine.optimizers import optimize

    t0 = time.perf_counter()
    res = optimize(
        program,
        method=method,
        preset=preset,
        trainset=_rows(program, n_train, 0),
        devset=_rows(program, n_dev, 1000),
        lm=_lm(lm, max_tokens),
        program_options=options,
        num_threads=num_threads,
        max_calls=max_calls,
    )
    wall = time.perf_counter() - t0
    return {
        "program": program,
        "method": method,
        "preset": preset,
        "lm": lm,
        "train": n_train,
        "dev": n_dev,
        "status": res.status,
        "score_before": res.score_before,
        "score_after": res.score_after,
        "calls": res.spend.calls,
        "tokens": res.spend.tokens,
        "by_role": res.spend.by_role,
        "estimate_calls": res.estimate.calls,
        "estimate_calls_max": res.estimate.calls_max,
        "estimate_tokens": res.estimate.tokens,
        "wall_s": round(wall, 2),
        "message": res.message,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--program", default="self_refine")
    ap.add_argument("--lm", default="fake")
    ap.add_argument("--methods", default="bootstrap,mipro,gepa")
    ap.add_argument("--presets", default="light,medium,heavy")
    ap.add_argument("--train", type=int, default=20)
    ap.add_argument("--dev", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--option", action="append", default=[], help="program option key=JSON")
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--max-calls", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("dspy").setLevel(logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    rows = []
    header = (
        "| method | preset | calls (est. / max) | measured calls | measured tokens | score before -> after | wall |"
    )
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    for method in args.methods.split(","):
        for preset in args.presets.split(","):
            with open(os.devnull, "w") as sink:  # the optimizers print and draw tqdm bars
                stdout, stderr = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = sink
                try:
                    r = run_one(
                        args.program,
                        method,
                        preset,
                        args.lm,
                        args.train,
                        args.dev,
                        args.max_tokens,
                        options,
                        args.num_threads,
                        args.max_calls,
                    )
                finally:
                    sys.stdout, sys.stderr = stdout, stderr
            rows.append(r)
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            print(
                f"| {method} | {preset} | {r['estimate_calls']:,} / {r['estimate_calls_max']:,} | {r['calls']:,} "
                f"| {r['tokens']:,} | {fmt(r['score_before'])} -> {fmt(r['score_after'])} | {r['wall_s']:.1f} s |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
