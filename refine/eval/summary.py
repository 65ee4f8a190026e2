"""The numbers of an evaluation: per-environment, overall and held-in/held-out metrics with their intervals
(`summarize`), and the difference of two runs (`compare`). Re-exported by `refine.eval`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["compare", "summarize"]

_RATES = ("success_rate", "progress_rate", "invalid_rate", "stuck_rate", "mean_steps")


def _metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    from refine.eval.stats import MIN_EPISODES, bootstrap_mean, wilson

    n = len(records)
    steps = sum(r["steps"] for r in records)
    wins = sum(bool(r["success"]) for r in records)
    invalid = sum(r["invalid_steps"] for r in records)
    stuck = sum(r["repeated_steps"] for r in records)
    return {
        "episodes": n,
        "n": n,
        "steps": steps,
        "success_rate": wins / n if n else 0.0,
        "success_ci": list(wilson(wins, n)),
        "progress_rate": sum(float(r["progress"]) for r in records) / n if n else 0.0,
        "progress_ci": list(bootstrap_mean([float(r["progress"]) for r in records])),
        # Per-step rates: steps of one episode are not independent, so these intervals are optimistic.
        "invalid_rate": invalid / steps if steps else 0.0,
        "invalid_ci": list(wilson(invalid, steps)),
        "stuck_rate": stuck / steps if steps else 0.0,
        "stuck_ci": list(wilson(stuck, steps)),
        "mean_steps": steps / n if n else 0.0,
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "errors": sum(1 for r in records if r.get("error")),
        "small_n": n < MIN_EPISODES,
        **_solvable(records),
    }


def _solvable(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`{"solvable": {...}}` when the environment flags its episodes (`solvable`: its expert reaches the goal within
    the step bound): how many are and are not, and the success and progress rates over the solvable ones alone."""
    from refine.eval.stats import bootstrap_mean, wilson

    flagged = [r for r in records if "solvable" in r]
    if not flagged:
        return {}
    ok = [r for r in flagged if r["solvable"]]
    wins = sum(bool(r["success"]) for r in ok)
    return {
        "solvable": {
            "n": len(ok),
            "unsolvable": len(flagged) - len(ok),
            "unflagged": len(records) - len(flagged),
            "success_rate": wins / len(ok) if ok else 0.0,
            "success_ci": list(wilson(wins, len(ok))),
            "progress_rate": sum(float(r["progress"]) for r in ok) / len(ok) if ok else 0.0,
            "progress_ci": list(bootstrap_mean([float(r["progress"]) for r in ok])),
            # Unsolvable episodes the agent solved anyway: the expert is not optimal (BabyAI's bot), or a bug.
            "unsolvable_solved": sum(bool(r["success"]) for r in flagged if not r["solvable"]),
        }
    }


def _macro_solvable(per_env: list[dict[str, Any]], groups: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The macro average over environments of the solvable-only rates (environments without solvable episodes are
    left out), intervals stratified by environment; {} when no environment flags its episodes."""
    from refine.eval.stats import stratified_bootstrap

    cells = [(m["solvable"], g) for m, g in zip(per_env, groups, strict=True) if "solvable" in m]
    if not cells:
        return {}
    scored = [(m, [r for r in g if r.get("solvable")]) for m, g in cells if m["n"]]
    out: dict[str, Any] = {
        k: sum(m[k] for m, _ in cells) for k in ("n", "unsolvable", "unflagged", "unsolvable_solved")
    }
    out["unflagged"] += sum(m.get("episodes", 0) for m in per_env if "solvable" not in m)
    out["envs"] = len(scored)
    for metric in ("success", "progress"):
        out[f"{metric}_rate"] = sum(m[f"{metric}_rate"] for m, _ in scored) / len(scored) if scored else 0.0
        values = [
            [float(bool(r["success"])) if metric == "success" else float(r["progress"]) for r in g] for _, g in scored
        ]
        out[f"{metric}_ci"] = list(stratified_bootstrap(values))
    return {"solvable": out}


def _macro(per_env: list[dict[str, Any]], groups: list[list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Average of per-environment rates (each environment weighs the same, as in AgentBoard), summed counts.

    `groups` (the episode records of each environment) give the intervals: a bootstrap stratified by environment.
    """
    from refine.eval.stats import stratified_bootstrap

    if not per_env:
        return _metrics([])
    out: dict[str, Any] = {k: sum(m[k] for m in per_env) / len(per_env) for k in _RATES}
    for k in ("episodes", "steps", "prompt_tokens", "completion_tokens", "errors"):
        out[k] = sum(m.get(k, 0) for m in per_env)
    out["n"] = out["episodes"]
    out["small_n"] = any(m.get("small_n", False) for m in per_env)
    if groups is not None:
        out["success_ci"] = list(stratified_bootstrap([[float(bool(r["success"])) for r in g] for g in groups]))
        out["progress_ci"] = list(stratified_bootstrap([[float(r["progress"]) for r in g] for g in groups]))
        out.update(_macro_solvable(per_env, groups))
    return out


def _drop(base: Mapping[str, Any], perturbed: Mapping[str, Any]) -> dict[str, float]:
    return {
        "success_rate": base["success_rate"] - perturbed["success_rate"],
        "progress_rate": base["progress_rate"] - perturbed["progress_rate"],
    }


def _variant_name(v: str) -> str:
    return "original" if v == "base" else "reworded"


def summarize(
    records: Iterable[Mapping[str, Any]], held_in: Iterable[str] = (), settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Per-environment, overall and held-in/held-out metrics (and perturbation drops) from episode records.

    `settings` (see `EvalConfig.settings`) is stored as the summary's `settings` and names its suite.
    """
    from refine.eval.stats import MIN_EPISODES

    recs = [dict(r) for r in records]
    held = {h.lower() for h in held_in}
    envs = sorted({r["env"] for r in recs})
    variants = [v for v in ("base", "perturbed") if any(r.get("variant", "base") == v for r in recs)]
    summary: dict[str, Any] = {"envs": {}, "variants": variants}
    if settings is not None:
        summary["suite"] = settings.get("suite", "refine")
        summary["settings"] = dict(settings)
    warnings: list[str] = []
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for env in envs:
        entry: dict[str, Any] = {"held_in": env in held}
        for v in variants:
            rs = [r for r in recs if r["env"] == env and r.get("variant", "base") == v]
            if rs:
                entry[v] = _metrics(rs)
                by_cell[(env, v)] = rs
                if len(rs) < MIN_EPISODES:
                    warnings.append(
                        f"{env} ({_variant_name(v)} actions): n={len(rs)} episodes < {MIN_EPISODES}; "
                        "its rates are too uncertain to compare (see the intervals)."
                    )
        if "base" in entry and "perturbed" in entry:
            entry["drop"] = _drop(entry["base"], entry["perturbed"])
        sv = entry.get("base", {}).get("solvable")
        if sv and sv["unsolvable"]:
            warnings.append(
                f"{env}: {sv['unsolvable']} of {sv['n'] + sv['unsolvable']} flagged episodes cannot be solved within "
                f"the step bound by the environment's expert (solvable: false); solvable.success_rate is over the "
                f"other {sv['n']}."
            )
        summary["envs"][env] = entry
    for group, names in (
        ("overall", envs),
        ("held_in", [e for e in envs if e in held]),
        ("held_out", [e for e in envs if e not in held]),
    ):
        if not names:
            continue
        g: dict[str, Any] = {"envs": names}
        for v in variants:
            cells = [e for e in names if v in summary["envs"][e]]
            if cells:
                g[v] = _macro([summary["envs"][e][v] for e in cells], [by_cell[(e, v)] for e in cells])
        if "base" in g and "perturbed" in g:
            g["drop"] = _drop(g["base"], g["perturbed"])
        summary[group] = g
    summary["warnings"] = warnings
    return summary


def _episode_id(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (r["env"], r.get("variant", "base"), r.get("index", 0), r.get("seed"), r.get("task"))


def _value(r: Mapping[str, Any], metric: str) -> float:
    return float(bool(r["success"])) if metric == "success" else float(r["progress"])


def compare(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The difference run b - run a of success and progress rates, per environment and variant and overall.

    Episodes are paired by (environment, variant, index, seed, task) where both runs played exactly the same
    episodes of a cell; otherwise that cell's difference is unpaired (Newcombe for success, bootstrap for progress).
    The overall difference is the macro average over the environments both runs share.

    Returns:
        {"envs": {env: {variant: {"success": diff, "progress": diff}}}, "overall": {variant: {...}}}, each diff
        {"delta", "ci", "n_a", "n_b", "paired"} (see `refine.eval.stats.difference`).
    """
    from refine.eval.stats import difference, stratified_difference

    ra, rb = [dict(r) for r in a], [dict(r) for r in b]
    out: dict[str, Any] = {"envs": {}, "overall": {}}
    envs = sorted({r["env"] for r in ra} & {r["env"] for r in rb})
    variants = [v for v in ("base", "perturbed") if any(r.get("variant", "base") == v for r in ra + rb)]
    for v in variants:
        pairs_a: list[dict[str, Any]] = []
        pairs_b: list[dict[str, Any]] = []
        strata: list[str] = []
        groups_a: list[list[dict[str, Any]]] = []
        groups_b: list[list[dict[str, Any]]] = []
        all_paired = True
        for env in envs:
            ca = {_episode_id(r): r for r in ra if r["env"] == env and r.get("variant", "base") == v}
            cb = {_episode_id(r): r for r in rb if r["env"] == env and r.get("variant", "base") == v}
            if not ca or not cb:
                continue
            paired = set(ca) == set(cb)
            all_paired = all_paired and paired
            keys = sorted(ca, key=repr)
            xa = [ca[k] for k in keys] if paired else list(ca.values())
            xb = [cb[k] for k in keys] if paired else list(cb.values())
            out["envs"].setdefault(env, {})[v] = {
                metric: difference([_value(r, metric) for r in xa], [_value(r, metric) for r in xb], paired=paired,
                                   binary=metric == "success")
                for metric in ("success", "progress")
            }  # fmt: skip
            pairs_a += xa
            pairs_b += xb
            strata += [env] * len(xa)
            groups_a.append(xa)
            groups_b.append(xb)
        if not groups_a:
            continue
        overall: dict[str, Any] = {}
        for metric in ("success", "progress"):
            if all_paired:
                overall[metric] = difference(
                    [_value(r, metric) for r in pairs_a], [_value(r, metric) for r in pairs_b], paired=True,
                    strata=strata,
                )  # fmt: skip
            else:
                overall[metric] = stratified_difference(
                    [[_value(r, metric) for r in g] for g in groups_a],
                    [[_value(r, metric) for r in g] for g in groups_b],
                )
        out["overall"][v] = overall
    return out
