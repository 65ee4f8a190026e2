"""The quickstart's verdict: base -> student effects on paired evaluation episodes, with intervals, and their text.

`effects` pairs the episodes of two evaluation runs (same env, split, task and seed), computes each metric's
difference with a stratified bootstrap interval, and names the effects that are real at that size (the interval
excludes 0 with at least `MIN_PAIRS` pairs); `render_effects` prints them. `refine.quickstart` re-exports both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_ERRORS", "MIN_PAIRS", "effects", "episode_records", "render_effects"]

FORMAT_ERRORS = ("no 'Action:' line in the reply", "empty reply")
MIN_PAIRS = 6  # paired episodes a difference needs before it is called real

# name -> (per-episode value, True when lower is better)
_METRICS: dict[str, tuple[Callable[[dict[str, Any]], float], bool]] = {
    "success": (lambda r: float(bool(r["success"])), False),
    "progress": (lambda r: float(r["progress"]), False),
    "invalid": (lambda r: r["invalid_steps"] / r["steps"] if r["steps"] else 1.0, True),
    "format_fail": (
        lambda r: (
            sum(1 for t in r["trajectory"] if t.get("action") is None and t.get("reason") in FORMAT_ERRORS) / r["steps"]
            if r["steps"]
            else 1.0
        ),
        True,
    ),
}


def episode_records(run_dir: Path) -> list[dict[str, Any]]:
    """The episode records of an evaluation run directory (original action wording only)."""
    from refine.store import RunStore

    # Read-only: reopening with resume=True would mark the finished run "running" again, and the next quickstart
    # would replay its evaluation instead of resuming it.
    store = RunStore.open_existing(run_dir)
    return [r for r in store.records("episodes") if r.get("variant", "base") == "base"]


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    # "run" tells apart the same episode played by students of different training seeds (replication pools them).
    return (r.get("run"), r["env"], r.get("index", 0), r.get("seed"), r.get("task"))


def effects(
    base: list[dict[str, Any]],
    student: list[dict[str, Any]],
    held_in: list[str],
    groups: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Base -> student on each group of environments: per metric the two rates with n and 95% intervals, the paired
    difference (`refine.eval.stats.difference`, stratified by environment) and whether its interval excludes 0.

    Metrics are per-episode values averaged over episodes then over environments: success, progress, invalid (share
    of an episode's steps the environment refused or that held no action) and format_fail (share of replies with no
    `Action:` line). `groups` defaults to held-in and held-out. A difference is `real` when its interval excludes 0
    and at least `MIN_PAIRS` paired episodes back it. Also `notes`: environments where neither model ever
    succeeded (this size cannot show a success effect there).
    """
    from refine.eval.stats import difference, stratified_bootstrap

    held = set(held_in)
    envs = sorted({r["env"] for r in base} | {r["env"] for r in student})
    groups = groups or {
        "held_in": [e for e in envs if e in held],
        "held_out": [e for e in envs if e not in held],
    }
    out: dict[str, Any] = {"groups": {}, "notes": []}
    for group, names in groups.items():
        if not names:
            continue
        ba = {_key(r): r for r in base if r["env"] in names}
        sb = {_key(r): r for r in student if r["env"] in names}
        keys = sorted(set(ba) & set(sb), key=repr)
        if not keys:
            continue
        strata = [k[1] for k in keys]  # the environment
        row: dict[str, Any] = {"envs": names, "n": len(keys), "paired": len(keys) == len(ba) == len(sb)}
        for metric, (value, lower_better) in _METRICS.items():
            a = [value(ba[k]) for k in keys]
            b = [value(sb[k]) for k in keys]
            by_a = [[x for x, e in zip(a, strata, strict=True) if e == env] for env in dict.fromkeys(strata)]
            by_b = [[x for x, e in zip(b, strata, strict=True) if e == env] for env in dict.fromkeys(strata)]

            def rate(groups_: list[list[float]]) -> float:
                return sum(sum(g) / len(g) for g in groups_) / len(groups_)

            def ci(groups_: list[list[float]]) -> list[float]:
                return list(stratified_bootstrap(groups_))

            diff = difference(a, b, paired=True, strata=strata)
            lo, hi = diff["ci"]  # type: ignore[misc]
            # With fewer than 6 pairs even all-same-sign differences fail a two-sided sign test at 5%, and a
            # bootstrap of identical differences has zero width: no claim from so few episodes.
            real = (lo > 0 or hi < 0) and len(keys) >= MIN_PAIRS
            row[metric] = {
                "base": rate(by_a),
                "base_ci": ci(by_a),
                "student": rate(by_b),
                "student_ci": ci(by_b),
                "delta": diff["delta"],
                "delta_ci": [lo, hi],
                "real": real,
                "better": real and ((hi < 0) == lower_better),
            }
        out["groups"][group] = row
    for env in envs:
        if not any(r["success"] for r in [*base, *student] if r["env"] == env):
            out["notes"].append(
                f"{env}: neither model solved an episode, so this size cannot show a success effect there "
                "(a 135M student trained for minutes on CPU; see README, 'What the quickstart shows')."
            )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def render_effects(result: dict[str, Any]) -> str:
    """A plain-text base -> student table (n, rates with 95% intervals, difference) and one line per real effect.

    Example:
        >>> r = {"groups": {"held_out": {"n": 12, "paired": True, "success": {"base": 0.0, "base_ci": [0.0, 0.24],
        ...     "student": 0.0, "student_ci": [0.0, 0.24], "delta": 0.0, "delta_ci": [0.0, 0.0], "real": False,
        ...     "better": False}}}, "notes": []}
        >>> print(render_effects(r).splitlines()[2])
        held_out   12 success          0% [0-24%]  ->     0% [0-24%]    +0% [+0, +0]
    """
    lines = [
        f"{'group':<9} {'n':>3} {'metric':<12} {'base':>14}  -> {'student':>14}  {'student - base':>14}",
        "-" * 74,
    ]
    claims: list[str] = []
    for group, row in result["groups"].items():
        for metric in ("success", "progress", "invalid", "format_fail"):
            m = row.get(metric)
            if not m:
                continue
            b = f"{_pct(m['base'])} [{_pct(m['base_ci'][0])[:-1]}-{_pct(m['base_ci'][1])}]"
            st = f"{_pct(m['student'])} [{_pct(m['student_ci'][0])[:-1]}-{_pct(m['student_ci'][1])}]"
            d = f"{100 * m['delta']:+.0f}% [{100 * m['delta_ci'][0]:+.0f}, {100 * m['delta_ci'][1]:+.0f}]"
            lines.append(f"{group:<9} {row['n']:>3} {metric:<12} {b:>14}  -> {st:>14}  {d:>14}")
            if m["real"]:
                word = "better" if m["better"] else "WORSE"
                claims.append(
                    f"real effect ({word}): {group} {metric} {_pct(m['base'])} -> {_pct(m['student'])}, "
                    f"difference {d} (95% paired interval excludes 0, n={row['n']} episodes)"
                )
    lines.append("")
    lines += claims or ["no effect at this size: every difference's 95% interval includes 0"]
    lines += result.get("notes", [])
    return "\n".join(lines)
