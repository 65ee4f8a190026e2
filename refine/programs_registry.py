"""Resolve a program name given on the command line to a `ProgramGraph` or a compiled program.

A program spec is one of: a built-in name (see `BUILTIN`), `package.module:attr` where attr is a `ProgramGraph`,
a `GraphModule` or a zero-argument factory returning one of those, or a directory/file written by `refine optimize`.

A saved directory is data: the program its `report.json` names is rebuilt only when it is one of `BUILTIN` (or a
spec the caller passes in `trust`), and no option in it can make refine import anything else
(`refine.saved_program`, below this module). `load_program` is the one loader every command uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refine.errors import ConfigError, RefineError
from refine.imports import import_object
from refine.saved_program import load_saved

__all__ = ["BUILTIN", "load_graph", "load_optimized", "load_program", "trusted_targets"]

# name -> "module:factory"; each factory takes keyword options and returns a ProgramGraph.
BUILTIN: dict[str, str] = {
    "agentrefine": "refine.programs.agentrefine:build_graph",
    "interactive": "refine.programs.interactive:build_graph",
    "self_refine": "refine.programs.self_refine:build_graph",
    "reflexion": "refine.programs.reflexion:build_graph",
}


# What the built-in programs themselves import from their default options (reflexion's toy environment).
_BUILTIN_DEPENDENCIES = ("refine.envs.base:ToyEnv",)


def trusted_targets(extra: Iterable[str] = ()) -> set[str]:
    """The `module:attr` targets a saved artifact may name: this project's programs plus `extra` (user-given)."""
    return {*BUILTIN, *BUILTIN.values(), *_BUILTIN_DEPENDENCIES, *extra}


def _resolve(spec: str) -> Any:
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise ConfigError(
            f"Unknown program {spec!r}. Use a built-in name ({', '.join(sorted(BUILTIN))}), "
            "'package.module:attr', or a directory saved by `refine optimize`."
        )
    return import_object(target, "program")


def load_graph(spec: str, **options: Any) -> Any:
    """Return the `ProgramGraph` named by `spec` (factories get `options`)."""
    from refine.graph import GraphModule, ProgramGraph

    obj = _resolve(spec)
    if callable(obj) and not isinstance(obj, ProgramGraph | GraphModule):
        try:
            obj = obj(**options)
        except RefineError:
            raise
        except Exception as exc:
            raise ConfigError(f"Program factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, GraphModule):
        return obj.graph
    if not isinstance(obj, ProgramGraph):
        raise ConfigError(f"Program {spec!r} resolved to a {type(obj).__name__}, not a ProgramGraph.")
    return obj


def load_optimized(path: str | Path, program: Any = None, allow_pickle: bool = False, trust: Iterable[str] = ()) -> Any:
    """Load a program written by `refine optimize` / `refine.optimizers.optimize(..., out=DIR)`.

    The folder is data: the program spec recorded in `report.json` is rebuilt only when it is one of this project's
    programs (`BUILTIN`) or listed in `trust`, and its recorded options cannot make refine import anything else
    (`refine.imports.only_trusted_imports`). Nothing is unpickled unless `allow_pickle`.

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
    trusted = {*trust, *([program] if isinstance(program, str) else [])}
    return load_saved(
        path, build_graph=load_graph, allowed=trusted_targets(trusted), program=program, allow_pickle=allow_pickle
    )


def load_program(spec: Any, trust: Iterable[str] = (), **options: Any) -> Any:
    """The one program loader: a compiled program from a spec.

    `spec` is a saved optimized program (a directory, or a .json next to its report), a built-in name or
    `package.module:attr` (built with `options`), or already a program: a `ProgramGraph` is compiled, any other
    object is returned as is. `trust`: `module:attr` specs the user gave for this run that a saved program's report
    may name.
    """
    from refine.graph import ProgramGraph

    if not isinstance(spec, str):
        return spec.compile() if isinstance(spec, ProgramGraph) else spec
    path = Path(spec)
    if path.exists():
        return load_optimized(path, trust=trust)
    return load_graph(spec, **options).compile()
