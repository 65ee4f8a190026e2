"""What an optimization run leaves behind, and loading it back: `program.json` (DSPy `save` state of every
predictor), `report.json` (config, scores, spend, estimate, per-predictor changes) and `report.md`.

`load_optimized(dir)` rebuilds the program from the spec and options recorded in `report.json` and loads the
optimized state into it; `refine synth --program DIR` uses it.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

from refine.errors import ConfigError

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

PROGRAM_FILE = "program.json"
PICKLED_DIR = "program_pickle"
REPORT_FILE = "report.json"
REPORT_MD = "report.md"


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


def load_optimized(
    path: str | Path, program: Any = None, allow_pickle: bool = False, trust: Iterable[str] = ()
) -> dspy.Module:
    """Load a program written by `refine optimize` / `refine.optimizers.optimize(..., out=DIR)`.

    The folder is data: the program spec recorded in `report.json` is rebuilt only when it is one of this project's
    programs (`refine.programs_registry.BUILTIN`) or listed in `trust`, and its recorded options cannot make refine
    import anything else (`refine.imports.only_trusted_imports`). Nothing is unpickled unless `allow_pickle`.

    Args:
        path: the output directory, or its `program.json`.
        program: the un-optimized program (spec, `ProgramGraph` or module) to load the state into; by default the
            program spec recorded in `report.json` is rebuilt with its recorded options. A spec given here is
            trusted (you typed it).
        allow_pickle: load the whole pickled program when no spec was recorded (only for files you trust: loading
            a pickle runs any code it holds).
        trust: `module:attr` program specs you trust for this load, besides the built-in programs.

    Raises:
        ConfigError: the path holds no optimized program, names a program that is not trusted, or the program
            cannot be rebuilt.
    """
    from refine.imports import only_trusted_imports
    from refine.programs_registry import load_graph, trusted_targets

    p = Path(path)
    directory = p.parent if p.is_file() else p
    state_file = p if p.is_file() else p / PROGRAM_FILE
    if not state_file.is_file():
        raise ConfigError(
            f"{str(path)!r} holds no optimized program (expected {PROGRAM_FILE}). Pass the --out directory of "
            "`refine optimize`."
        )
    report_file = directory / REPORT_FILE
    report: Any = {}
    if report_file.is_file():
        try:
            report = json.loads(report_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{report_file} is not a readable JSON report ({exc}).") from None
    cfg = report.get("config", {}) if isinstance(report, dict) else None
    options = cfg.get("program_options") or {} if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or not isinstance(options, dict) or not isinstance(cfg.get("program"), str | None):
        raise ConfigError(f"{report_file} is malformed: 'config' must hold a 'program' string and a dict of options.")
    trusted = {*trust, *([program] if isinstance(program, str) else [])}
    hint = (
        "If you trust that module, pass it yourself: load_optimized(DIR, program='module:attr') in Python, or "
        "--trust-program module:attr on the command line."
    )
    with only_trusted_imports(trusted_targets(trusted), str(report_file), hint):
        return _rebuild(program, cfg, options, directory, state_file, allow_pickle, load_graph)


def _rebuild(
    program: Any,
    cfg: dict[str, Any],
    options: dict[str, Any],
    directory: Path,
    state_file: Path,
    allow_pickle: bool,
    load_graph: Any,
) -> dspy.Module:
    from refine.graph import GraphModule, ProgramGraph

    if program is None and cfg.get("program"):
        program = load_graph(cfg["program"], **options)
    if program is None:
        if (directory / PICKLED_DIR).is_dir():
            if not allow_pickle:
                raise ConfigError(
                    f"{directory} records no program spec, only a pickled program. Pass program=<the original "
                    "program> or allow_pickle=True (only for files you trust)."
                )
            return dspy.load(str(directory / PICKLED_DIR), allow_pickle=True)
        raise ConfigError(f"{directory} records no program spec; pass program=<the original program>.")
    if isinstance(program, str):
        program = load_graph(program, **options)
    if isinstance(program, ProgramGraph):
        program = program.compile()
    elif isinstance(program, GraphModule):
        program = program.deepcopy()
    if not isinstance(program, dspy.Module):
        raise ConfigError(f"Cannot load {state_file} into a {type(program).__name__}; pass a program or its spec.")
    try:
        program.load(str(state_file))
    except Exception as exc:
        raise ConfigError(
            f"Cannot load {state_file} into program {cfg.get('program') or type(program).__name__}: {exc}. "
            "Was it optimized with other program options?"
        ) from exc
    return program


def changes_to_dicts(changes: list[PredictorChange]) -> list[dict[str, Any]]:
    return [asdict(c) for c in changes]
