"""Programs read as wiring (#18 item 5): every built-in program's `build_graph` is its wiring alone.

Node logic lives in module-level functions or small classes (bound with `functools.partial` or constructor
arguments), so `build_graph` holds no `def`, `lambda` or `class` of its own and stays under 50 lines, docstring
included, reading top to bottom as the method's loop. Checked with `ast` over `programs/*.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"
MAX_LINES = 50  # a build_graph must be shorter than this
NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def wiring_problems(source: str, filename: str) -> list[str]:
    """What keeps each top-level `build_graph` in `source` from being wiring alone (empty when it is)."""
    problems = []
    for fn in ast.parse(source, filename).body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "build_graph"):
            continue
        lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if lines >= MAX_LINES:
            problems.append(
                f"{filename}: build_graph is {lines} lines (limit: under {MAX_LINES}); move node logic to "
                "module-level functions bound with functools.partial."
            )
        for node in ast.walk(fn):
            if node is not fn and isinstance(node, NESTED):
                what = getattr(node, "name", "lambda")
                problems.append(
                    f"{filename}:{node.lineno}: build_graph defines {what!r} inside it; define it at module level."
                )
    return problems


def _program_files() -> list[Path]:
    return sorted(p for p in PROGRAMS.glob("*.py") if p.name != "__init__.py")


def test_the_four_graph_programs_are_checked():
    with_graph = {p.stem for p in _program_files() if "def build_graph(" in p.read_text()}
    assert with_graph >= {"agentrefine", "interactive", "reflexion", "self_refine"}


@pytest.mark.parametrize("path", _program_files(), ids=lambda p: p.stem)
def test_build_graph_is_wiring_alone(path: Path):
    assert wiring_problems(path.read_text(), f"programs/{path.name}") == []


def test_the_check_catches_closures_and_long_builders():
    body = "\n".join(f"    g.add_edge('n{i}', 'n{i + 1}')" for i in range(47))
    long = f"def build_graph():\n    g = make()\n{body}\n    return g\n"  # 50 lines
    assert wiring_problems(long, "p.py") == [
        "p.py: build_graph is 50 lines (limit: under 50); move node logic to module-level functions bound with "
        "functools.partial."
    ]
    assert wiring_problems(long.replace(body.splitlines()[0] + "\n", ""), "p.py") == []  # 49 lines pass
    nested = (
        "def build_graph(n):\n    def step(x):\n        return x\n    g.add_edge('a', 'b', condition=lambda s: n)\n"
    )
    assert wiring_problems(nested, "p.py") == [
        "p.py:2: build_graph defines 'step' inside it; define it at module level.",
        "p.py:4: build_graph defines 'lambda' inside it; define it at module level.",
    ]
    assert wiring_problems("def helper():\n    def inner():\n        pass\n", "p.py") == []  # only build_graph counts
