"""Small-scale replication of AgentRefine's central claim, offline on 2 CPU cores.

Teacher: the environments' own experts correcting the student's mistakes (or a user LM via `--teacher-lm`, used by
the one-shot synthesis of `refine quickstart`). Student: SmolLM2-135M-Instruct. The student is trained on held-in
environments (BabyAI, PDDL blocks) and evaluated on held-out ones (TextWorld, ScienceWorld), for several seeds and the
paper's ablation: erroneous turns masked (AgentRefine), erroneous turns trained, refinement episodes dropped.

    python examples/replication.py --out runs/replication --seeds 0 1 2 --episodes 6 --steps 30 --eval-episodes 2

Results land in `<out>/results.json` and a markdown table (`<out>/results.md`). At this scale the numbers are noisy
and a 135M model mostly fails held-out tasks; record them as they come.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from refine.quickstart import QuickstartConfig, distill_rows, evaluate_model, synthesize_env

ABLATIONS = ("masked", "trained", "no-refine")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/replication"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=6, help="On-policy synthesis episodes per held-in env and seed.")
    ap.add_argument("--steps", type=int, default=30, help="Distillation steps per run.")
    ap.add_argument("--eval-episodes", type=int, default=2)
    ap.add_argument("--eval-max-steps", type=int, default=8)
    ap.add_argument("--train-envs", default="babyai,pddl")
    ap.add_argument("--heldout-envs", default="textworld,scienceworld")
    args = ap.parse_args()

    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    base_done = False
    for seed in args.seeds:
        cfg = QuickstartConfig(
            out=args.out / f"seed{seed}",
            seed=seed,
            train_envs=args.train_envs.split(","),
            heldout_envs=args.heldout_envs.split(","),
            env_episodes=args.episodes,
            distill_steps=args.steps,
            eval_episodes=args.eval_episodes,
            eval_max_steps=args.eval_max_steps,
        )
        data_dir = cfg.out / "synth_env"
        synth = synthesize_env(cfg, data_dir) if not (data_dir / "manifest.json").exists() else None
        if not base_done:
            base = evaluate_model(cfg, "embedded", args.out / "eval_base")
            results["base"] = base
            base_done = True
        for ablation in ABLATIONS:
            student = cfg.out / f"student_{ablation}"
            if (student / "config.json").exists():
                dist: dict[str, Any] = {"resumed": True, "steps": cfg.size("distill_steps")}
            else:
                dist = distill_rows(cfg, [data_dir], student, ablation=ablation)
            ev = evaluate_model(cfg, f"local/{student}", cfg.out / f"eval_{ablation}") if dist.get("steps") else None
            results["runs"].append({"seed": seed, "ablation": ablation, "synth": synth, "distill": dist, "eval": ev})
            (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(_table(results))


def _rates(summary: dict[str, Any] | None, group: str) -> tuple[float, float] | None:
    if not summary or group not in summary:
        return None
    m = summary[group]["base"]
    return float(m["success_rate"]), float(m["progress_rate"])


def _cell(rates: tuple[float, float] | None) -> str:
    return "-" if rates is None else f"{rates[0]:.2f} / {rates[1]:.2f}"


def _table(results: dict[str, Any]) -> str:
    """Markdown: one row per (ablation, seed), then the mean over seeds per ablation.

    Example:
        >>> ev = {"held_in": {"base": {"success_rate": 0.5, "progress_rate": 0.75}},
        ...       "held_out": {"base": {"success_rate": 0.0, "progress_rate": 0.25}}}
        >>> runs = [{"seed": s, "ablation": "masked", "eval": ev, "synth": {"accepted": 3},
        ...          "distill": {"first_loss": 0.8, "last_loss": 0.1}} for s in (0, 1)]
        >>> print(_table({"runs": runs}).splitlines()[-1])
        | masked | 2 | 0.50 / 0.75 | 0.00 / 0.25 |
    """
    lines = [
        "| model | seed | accepted | held-in SR / PR | held-out SR / PR | train loss first -> last |",
        "|---|---|---|---|---|---|",
    ]
    base = results.get("base")
    lines.append(f"| base | - | - | {_cell(_rates(base, 'held_in'))} | {_cell(_rates(base, 'held_out'))} | - |")
    for r in results["runs"]:
        d = r.get("distill") or {}
        loss = f"{d['first_loss']:.3f} -> {d['last_loss']:.3f}" if d.get("first_loss") is not None else "-"
        accepted = (r.get("synth") or {}).get("accepted", "-")
        lines.append(
            f"| {r['ablation']} | {r['seed']} | {accepted} | {_cell(_rates(r['eval'], 'held_in'))} | "
            f"{_cell(_rates(r['eval'], 'held_out'))} | {loss} |"
        )
    lines += ["", "| model | seeds | mean held-in SR / PR | mean held-out SR / PR |", "|---|---|---|---|"]
    for ablation in dict.fromkeys(r["ablation"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["ablation"] == ablation and r.get("eval")]
        cells = []
        for group in ("held_in", "held_out"):
            rates = [x for x in (_rates(r["eval"], group) for r in runs) if x is not None]
            mean = (sum(x[0] for x in rates) / len(rates), sum(x[1] for x in rates) / len(rates)) if rates else None
            cells.append(_cell(mean))
        lines.append(f"| {ablation} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
