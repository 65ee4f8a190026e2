"""What an optimization run leaves behind, and loading it back: `program.json` (DSPy `save` state of every
predictor), `report.json` (config, scores, spend, estimate, per-predictor changes) and `report.md`.

`load_optimized(dir)` (defined in `refine.programs_registry`, re-exported here) rebuilds the program from the spec
and options recorded in `report.json` and loads the optimized state into it; `refine synth --program DIR` uses it.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

from refine.programs_registry import load_optimized
from refine.saved_program import PICKLED_DIR, PROGRAM_FILE, REPORT_FILE, REPORT_MD

__all__ = [
    "PROGRAM_FILE",
    "REPORT_FILE",
    "REPORT_MD",
    "PredictorChange",
    "changes_to_dicts",
    "diff_programs",
    "load_optimized",
    "render_markdown",
    "save_optimized",
]

logger = logging.getLogger(__name__)


@dataclass
class PredictorChange:
    """How one predictor changed: its instructions (old/new and a unified diff) and its number of demos."""

    name: str
    old_instructions: str
    new_instructions: str
    diff: str
    demos_before: int
    demos_after: int

    @property
    def changed(self) -> bool:
        return self.old_instructions != self.new_instructions or self.demos_before != self.demos_after


def diff_programs(before: dspy.Module, after: dspy.Module) -> list[PredictorChange]:
    """Per-predictor changes between two versions of the same program (matched by predictor name)."""
    old = dict(before.named_predictors())
    changes = []
    for name, pred in after.named_predictors():
        prev = old.get(name)
        old_ins = prev.signature.instructions if prev is not None else ""
        new_ins = pred.signature.instructions
        diff = "".join(
            difflib.unified_diff(
                old_ins.splitlines(keepends=True) or [""],
                new_ins.splitlines(keepends=True) or [""],
                fromfile=f"{name} (before)",
                tofile=f"{name} (after)",
            )
        )
        changes.append(
            PredictorChange(
                name=name,
                old_instructions=old_ins,
                new_instructions=new_ins,
                diff=diff,
                demos_before=len(prev.demos) if prev is not None else 0,
                demos_after=len(pred.demos),
            )
        )
    return changes


def _fmt_score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: scores, spend against estimate and budget, and each changed predictor."""
    cfg = report["config"]
    spend = report["spend"]
    est = report["estimate"]
    lines = [
        f"# Optimization report: {cfg.get('program') or report.get('program_name', 'program')}",
        "",
        f"- method: **{cfg['method']}**, preset: **{cfg['preset']}**, status: **{report['status']}**",
        f"- score: before **{_fmt_score(report['score_before'])}**, "
        f"after **{_fmt_score(report['score_after'])}** "
        f"({report['scored_on']}, {report['n_dev']} examples; trainset {report['n_train']} examples)",
        f"- LM calls: {spend['calls']:,} (estimate ~{est['calls']:,}, budget {report['budget']}); "
        f"tokens: {spend['tokens']:,} (estimate ~{est['tokens']:,})",
        f"- wall time: {report['seconds']:.1f} s",
    ]
    if report.get("message"):
        lines.append(f"- note: {report['message']}")
    if spend.get("by_role"):
        lines += ["", "| LM role | calls | prompt tokens | completion tokens |", "|---|---|---|---|"]
        for role, r in spend["by_role"].items():
            lines.append(f"| {role} | {r['calls']:,} | {r['prompt_tokens']:,} | {r['completion_tokens']:,} |")
    lines += ["", "## Changed predictors", ""]
    changed = [
        c
        for c in report["changes"]
        if c["old_instructions"] != c["new_instructions"] or c["demos_before"] != c["demos_after"]
    ]
    if not changed:
        lines.append("No predictor changed.")
    for c in changed:
        lines += [f"### `{c['name']}`", "", f"demos: {c['demos_before']} -> {c['demos_after']}", ""]
        if c["diff"]:
            lines += ["```diff", c["diff"].rstrip("\n"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def save_optimized(program: dspy.Module, out: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write `program.json`, `report.json` and `report.md` into `out` (created). Programs not rebuildable from a
    spec are also pickled whole (`program_pickle/`, DSPy `save_program=True`) so they can still be loaded."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"program": out / PROGRAM_FILE, "report": out / REPORT_FILE, "markdown": out / REPORT_MD}
    program.save(str(paths["program"]))
    if not report["config"].get("program"):
        try:
            program.save(str(out / PICKLED_DIR), save_program=True)
            paths["pickle"] = out / PICKLED_DIR
        except Exception as exc:  # lambdas over unpicklable state, etc.
            logger.warning(
                "Could not pickle the whole program (%s); load it with load_optimized(dir, program=...).", exc
            )
    paths["report"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    return paths


def changes_to_dicts(changes: list[PredictorChange]) -> list[dict[str, Any]]:
    return [asdict(c) for c in changes]
