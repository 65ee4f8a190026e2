"""AgentRefine's ablation study as one resumable command: seeds x {errors masked, errors trained, no refinement} + base.

Teacher: the environments' own experts correcting the student's mistakes (on-policy refinement data, train split).
Student: SmolLM2-135M-Instruct (`--student` for another base). Every model plays the same evaluation episodes
(test split, `--eval-seed`), on three splits:

* held-in: the training environments' test tasks (default BabyAI + PDDL blocks);
* held-out: environments never trained on (default TextWorld + ScienceWorld);
* unseen: unseen domains of a trained family (default PDDL gripper, while training saw only blocks).

Each cell's rates carry n and a 95% interval, and each comparison (ablation - base, masked - trained, masked -
no-refine) is a paired difference by episode (`refine.eval.stats`), pooled over seeds. Every stage is skipped when its
output exists, so a killed study resumes where it stopped: rerun the same command.

    python examples/replication.py --out runs/replication --seeds 0 1 2 --episodes 6 --steps 30 --eval-episodes 4
    python examples/replication.py --out runs/repl-gpu --seeds 0 1 2 --episodes 60 --steps 300 --eval-episodes 20 \\
        --eval-max-steps 30 --workers 32    # a GPU box: hundreds of steps, intervals narrow enough to read

Results: `<out>/results.json` and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from refine.errors import ConfigError
from refine.quickstart import (
    QuickstartConfig,
    distill_rows,
    effects,
    episode_records,
    evaluate_model,
    synthesize_env,
)

ABLATIONS = ("masked", "trained", "no-refine")
METRICS = ("success", "progress", "invalid", "format_fail")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/replication"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (data and order).")
    ap.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=ABLATIONS)
    ap.add_argument("--student", default="embedded", help="Base student: embedded or local/DIR.")
    ap.add_argument("--episodes", type=int, default=6, help="On-policy synthesis episodes per held-in env and seed.")
    ap.add_argument("--steps", type=int, default=30, help="Distillation steps per run.")
    ap.add_argument("--batch", type=int, default=1, help="Trajectories per distillation step.")
    ap.add_argument("--lr", type=float, default=None, help="Distillation learning rate (default 1e-4; LoRA 5e-4).")
    ap.add_argument("--lora", action="store_true", help="Train LoRA adapters (merged) instead of all weights.")
    ap.add_argument("--synth-max-steps", type=int, default=20)
    ap.add_argument("--eval-episodes", type=int, default=4, help="Evaluation episodes per environment and split.")
    ap.add_argument(
        "--heldout-episodes", type=int, default=None, help="Episodes per held-out env (default --eval-episodes)."
    )
    ap.add_argument(
        "--unseen-episodes", type=int, default=None, help="Episodes per unseen env (default --eval-episodes)."
    )
    ap.add_argument("--eval-max-steps", type=int, default=8)
    ap.add_argument("--eval-seed", type=int, default=0, help="Evaluation episodes (the same for every model).")
    ap.add_argument("--train-envs", default="babyai,pddl")
    ap.add_argument("--heldout-envs", default="textworld,scienceworld")
    ap.add_argument(
        "--unseen",
        default="pddl:gripper",
        help="ENV:TASK,... unseen tasks/domains of trained families ('' for none).",
    )
    ap.add_argument(
        "--part",
        default="all",
        choices=("all", "base", "students"),
        help="Run only the base model's evaluation or only the students (e.g. one process per seed on a GPU box); "
        "a final run with the default 'all' finds every stage done and writes the comparisons.",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: compare the finished evaluation runs found under --out (e.g. a study cut short, or one "
        "copied back from a GPU box without its weights).",
    )
    ap.add_argument("--workers", type=int, default=8, help="Concurrent episodes (the engine batches their LM calls).")
    args = ap.parse_args(argv)
    for name in ("episodes", "steps", "batch", "eval_episodes", "eval_max_steps", "workers", "synth_max_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    for name in ("heldout_episodes", "unseen_episodes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    args.train = [e for e in args.train_envs.split(",") if e]
    args.heldout = [e for e in args.heldout_envs.split(",") if e]
    args.unseen_tasks = {}
    for item in [u for u in args.unseen.split(",") if u]:
        env, sep, task = item.partition(":")
        if not sep or not task:
            raise ConfigError(f"--unseen takes ENV:TASK items (e.g. pddl:gripper), got {item!r}.")
        args.unseen_tasks.setdefault(env, []).append(task)
    args.env_options = _held_in_options(args)
    return args


def _held_in_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Held-in tasks of each trained env named in `--unseen`: its training tasks without the unseen ones, so that
    those stay unseen (PDDL trains on blocks only already; BabyAI's unseen levels are taken out of its level list)."""
    import importlib

    from refine.quickstart import QuickstartConfig

    options: dict[str, dict[str, Any]] = {}
    for env, unseen in args.unseen_tasks.items():
        if env not in args.train:
            continue
        tasks = QuickstartConfig().train_options(env).get("tasks")
        if tasks is None:
            module = importlib.import_module(f"refine.envs.{env}")
            tasks = getattr(module, "DEFAULT_TASKS", None)
        if tasks is None:
            raise ConfigError(f"--unseen {env}:...: {env} has no task list to hold tasks out of.")
        keep = [t for t in tasks if t not in unseen]
        if not keep:
            raise ConfigError(f"--unseen takes every {env} task ({', '.join(tasks)}); leave at least one to train on.")
        options[env] = {"tasks": keep}
    return options


def _config(args: argparse.Namespace, seed: int) -> QuickstartConfig:
    return QuickstartConfig(
        out=args.out / f"seed{seed}",
        seed=seed,
        student=args.student,
        train_envs=args.train,
        heldout_envs=args.heldout,
        env_episodes=args.episodes,
        distill_steps=args.steps,
        distill_batch=args.batch,
        distill_lr=args.lr,
        env_options=args.env_options,
        eval_episodes=args.eval_episodes,
        eval_max_steps=args.eval_max_steps,
        synth_max_steps=args.synth_max_steps,
        lora=args.lora,
        workers=args.workers,
    )


def _finished(path: Path) -> bool:
    manifest = path / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("status") == "finished"


def _evaluate(args: argparse.Namespace, cfg: QuickstartConfig, model: str, out: Path, run: Any) -> list[dict]:
    """Held-in, held-out and unseen splits, one run directory each; records tagged with their split and run.

    Held-out envs get `--heldout-episodes` (PDDL has only 5 blocks and 10 gripper test problems: more episodes would
    replay the same problems, and greedy decoding the same episodes, counting them twice)."""
    records: list[dict[str, Any]] = []
    held_in = out / "eval"
    if not _finished(held_in) and not args.report_only:
        evaluate_model(cfg, model, held_in, envs=list(args.train), seed=args.eval_seed)
    if _finished(held_in):
        records += episode_records(held_in)
    if args.heldout:
        held_out = out / "eval_heldout"
        if not _finished(held_out) and not args.report_only:
            n = args.heldout_episodes or args.eval_episodes
            evaluate_model(
                cfg.model_copy(update={"eval_episodes": n}),
                model,
                held_out,
                envs=list(args.heldout),
                env_options={},
                seed=args.eval_seed,
            )
        if _finished(held_out):
            records += episode_records(held_out)
    if args.unseen_tasks:
        unseen = out / "eval_unseen"
        if not _finished(unseen) and not args.report_only:
            evaluate_model(
                cfg.model_copy(update={"eval_episodes": args.unseen_episodes or args.eval_episodes}),
                model,
                unseen,
                envs=list(args.unseen_tasks),
                env_options={env: {"tasks": tasks} for env, tasks in args.unseen_tasks.items()},
                seed=args.eval_seed,
            )
        if _finished(unseen):
            records += [{**r, "env": f"{r['env']}:unseen"} for r in episode_records(unseen)]
    return [{**r, "run": run} for r in records]


def run_study(args: argparse.Namespace, say: Any = print) -> dict[str, Any]:
    """Run (or resume) every stage; returns the results also written to `<out>/results.json`."""
    args.out.mkdir(parents=True, exist_ok=True)
    groups = {
        "held_in": list(args.train),
        "held_out": list(args.heldout),
        "unseen": [f"{e}:unseen" for e in args.unseen_tasks],
    }
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "groups": groups, "runs": []}
    base_cfg = _config(args, args.seeds[0])
    base_records: list[dict[str, Any]] = []
    if args.part in ("all", "base"):
        say("base: evaluating")
        base_records = _evaluate(args, base_cfg, args.student, args.out / "base", None)
    records: dict[str, list[dict[str, Any]]] = {a: [] for a in args.ablations}
    for seed in args.seeds if args.part != "base" else []:
        cfg = _config(args, seed)
        data = cfg.out / "synth_env"
        if _finished(data):
            synth = {"resumed": True, **json.loads((data / "manifest.json").read_text()).get("totals", {})}
        elif args.report_only:
            continue
        else:
            say(f"seed {seed}: on-policy synthesis")
            synth = synthesize_env(cfg, data)
        for ablation in args.ablations:
            student = cfg.out / f"student_{ablation}"
            summary = cfg.out / f"distill_{ablation}.json"
            if args.report_only and not (student / "config.json").exists():
                continue
            if (student / "config.json").exists():
                dist: dict[str, Any] = {"resumed": True}
                if summary.exists():
                    dist.update(json.loads(summary.read_text()))
            else:
                say(f"seed {seed}: distilling ({ablation})")
                dist = distill_rows(cfg, [data], student, ablation=ablation)
                summary.write_text(json.dumps(dist, default=str))
            if not (student / "config.json").exists():
                results["runs"].append({"seed": seed, "ablation": ablation, "synth": synth, "distill": dist})
                continue
            say(f"seed {seed}: evaluating ({ablation})")
            recs = _evaluate(args, cfg, f"local/{student}", cfg.out / f"eval_{ablation}", seed)
            records[ablation] += recs
            results["runs"].append({"seed": seed, "ablation": ablation, "synth": synth, "distill": dist})
    if args.part != "all":  # one part of a study split over processes: the last `--part all` run compares
        return results
    # The base model is one model: pair it with every seed's student by replaying its records under each run tag.
    base_by_run = [{**r, "run": seed} for seed in args.seeds for r in base_records]
    # Its own rates come from its distinct episodes (the replayed copies would narrow its intervals by sqrt(seeds)).
    results["base"] = effects(base_records, base_records, args.train, groups)
    comparisons: dict[str, Any] = {}
    for ablation, recs in records.items():
        if recs:
            comparisons[f"{ablation} - base"] = effects(base_by_run, recs, args.train, groups)
    if records.get("masked"):
        for other in ("trained", "no-refine"):
            if records.get(other):
                comparisons[f"masked - {other}"] = effects(records[other], records["masked"], args.train, groups)
    results["comparisons"] = comparisons
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(table(results))
    plot(results, args.out / "results.png")
    return results


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: per model and split, each metric's rate [95% interval] (from the `X - base` comparisons: the base
    row is their reference side), then every comparison's paired difference [interval], a * where it excludes 0.

    Example:
        >>> m = {"base": 0.0, "base_ci": [0.0, 0.2], "student": 0.5, "student_ci": [0.3, 0.7], "delta": 0.5,
        ...      "delta_ci": [0.3, 0.7], "real": True, "better": True}
        >>> cmp = {"groups": {"held_in": {"n": 8, "success": m}}, "notes": []}
        >>> print(table({"comparisons": {"masked - base": cmp}}).splitlines()[2])
        | base | held_in | 8 | 0 [0-20] | - | - | - |
    """
    lines = [
        "| model | split | n | success % | progress % | invalid % | no Action line % |",
        "|---|---|---|---|---|---|---|",
    ]

    def cells(row: dict[str, Any], side: str) -> list[str]:
        out = []
        for metric in METRICS:
            m = row.get(metric)
            out.append("-" if not m else f"{_pct(m[side])} [{_pct(m[side + '_ci'][0])}-{_pct(m[side + '_ci'][1])}]")
        return out

    comparisons = results.get("comparisons", {})
    base_rows = results.get("base") or next((c for name, c in comparisons.items() if name.endswith(" - base")), None)
    if base_rows:
        for split, row in base_rows["groups"].items():
            lines.append(f"| base | {split} | {row['n']} | " + " | ".join(cells(row, "base")) + " |")
    for name, cmp in comparisons.items():
        if name.endswith(" - base"):
            for split, row in cmp["groups"].items():
                lines.append(
                    f"| {name.removesuffix(' - base')} | {split} | {row['n']} | "
                    + " | ".join(cells(row, "student"))
                    + " |"
                )
    lines += [
        "",
        "| comparison | split | n | success | progress | invalid | no Action line |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cmp in comparisons.items():
        for split, row in cmp["groups"].items():
            diffs = []
            for metric in METRICS:
                m = row.get(metric)
                if not m:
                    diffs.append("-")
                    continue
                lo, hi = m["delta_ci"]
                star = "*" if m["real"] else ""
                diffs.append(f"{100 * m['delta']:+.0f}{star} [{100 * lo:+.0f}, {100 * hi:+.0f}]")
            lines.append(f"| {name} | {split} | {row['n']} | " + " | ".join(diffs) + " |")
    lines += [
        "",
        "Percent; [95% interval]; differences are paired by episode (same evaluation episodes for every model), "
        "pooled over seeds; * = the interval excludes 0. invalid = share of steps refused by the environment or "
        "without an action.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per split: success and no-`Action:`-line rate of the base model and each ablation, with their 95%
    intervals. Returns the PNG's path (None without matplotlib or results)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    comparisons = {k.removesuffix(" - base"): v for k, v in results.get("comparisons", {}).items() if " - base" in k}
    base = results.get("base") or next(iter(comparisons.values()), None)
    if not base:
        return None
    splits = list(base["groups"])
    models = ["base", *comparisons]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for j, (metric, label) in enumerate((("success", "success"), ("format_fail", "no Action line"))):
            xs, ys, errs = [], [], [[], []]
            for i, model in enumerate(models):
                row = (base if model == "base" else comparisons[model])["groups"].get(split, {})
                m = row.get(metric)
                if not m:
                    continue
                side = "base" if model == "base" else "student"
                value, (lo, hi) = 100 * m[side], (100 * m[side + "_ci"][0], 100 * m[side + "_ci"][1])
                xs.append(i + (j - 0.5) * 0.35)
                ys.append(value)
                errs[0].append(max(0.0, value - lo))
                errs[1].append(max(0.0, hi - value))
            ax.bar(xs, ys, width=0.35, yerr=errs, capsize=3, label=label, color=("tab:green", "tab:red")[j])
        n = base["groups"][split]["n"]
        ax.set_title(f"{split} ({', '.join(base['groups'][split]['envs'])}; n={n} episodes)", fontsize=9)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% (95% interval)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_study(args)
    print(table(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
