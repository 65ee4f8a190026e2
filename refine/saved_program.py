"""Loading a program folder written by `refine optimize`: `program.json` (the optimized predictor state) and
`report.json` (the program spec and options to rebuild it from).

The folder is data. The spec recorded in `report.json` is rebuilt only when it is on the caller's allow-list, and
the rebuild runs inside `refine.imports.only_trusted_imports`, so no recorded option can make refine import
anything else; nothing is unpickled unless the caller allows it. This module sits below the program registry: the
registry (`refine.programs_registry.load_optimized` / `load_program`) passes in its allow-list and its graph
builder, so neither module imports the other's callers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dspy

from refine.errors import ConfigError

__all__ = ["PICKLED_DIR", "PROGRAM_FILE", "REPORT_FILE", "REPORT_MD", "TRUST_HINT", "load_saved"]

PROGRAM_FILE = "program.json"
PICKLED_DIR = "program_pickle"
REPORT_FILE = "report.json"
REPORT_MD = "report.md"

TRUST_HINT = (
    "If you trust that module, pass it yourself: load_optimized(DIR, program='module:attr') in Python, or "
    "--trust-program module:attr on the command line."
)

GraphBuilder = Callable[..., Any]  # (spec, **options) -> ProgramGraph


def _read_config(path: Path) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """(folder, state file, the report's config, its program options) of a saved program, checked for shape."""
    directory = path.parent if path.is_file() else path
    state_file = path if path.is_file() else path / PROGRAM_FILE
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
    return directory, state_file, cfg, options


def load_saved(
    path: str | Path,
    *,
    build_graph: GraphBuilder,
    allowed: Iterable[str],
    program: Any = None,
    allow_pickle: bool = False,
) -> dspy.Module:
    """Rebuild the program saved in `path` and load its optimized state.

    Args:
        path: the output folder of `refine optimize`, or its `program.json`.
        build_graph: `(spec, **options) -> ProgramGraph` for the recorded (or given) program spec.
        allowed: the `module:attr` targets the rebuild may import (the registry's programs plus what the user
            trusted); anything else named by the folder is refused before it is imported.
        program: the un-optimized program (spec, `ProgramGraph` or module) to load the state into instead of the
            recorded spec.
        allow_pickle: load a whole pickled program when no spec was recorded (runs any code the pickle holds).

    Raises:
        ConfigError: the folder holds no program, is malformed, names an untrusted target, or does not load.
    """
    from refine.imports import only_trusted_imports

    directory, state_file, cfg, options = _read_config(Path(path))
    with only_trusted_imports(allowed, str(directory / REPORT_FILE), TRUST_HINT):
        return _rebuild(program, cfg, options, directory, state_file, allow_pickle, build_graph)


def _rebuild(
    program: Any,
    cfg: dict[str, Any],
    options: dict[str, Any],
    directory: Path,
    state_file: Path,
    allow_pickle: bool,
    build_graph: GraphBuilder,
) -> dspy.Module:
    from refine.graph import GraphModule, ProgramGraph

    if program is None and cfg.get("program"):
        program = build_graph(cfg["program"], **options)
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
        program = build_graph(program, **options)
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
