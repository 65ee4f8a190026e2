"""The layout: the project's import graph has no cycle and no upward arrow, and no module is over 500 lines.

The graph is built with `ast` from every module of the wheel (pyproject's `package-dir`, so `signatures/`, `programs/`
and `optimizers/` count as `refine.signatures` etc.). Every import that runs counts: at module level and inside
functions, and through package faces (`from refine.optimizers import x` runs `optimizers/__init__.py` and whatever it
imports). Imports under `if TYPE_CHECKING:` never run and do not count.

Floors, bottom to top (an arrow may point down or sideways, never up):

* ground: the data model, codec and formats, the run store, errors, LMs, environments, the graph, the runners
  (`refine.executor`) and the small helpers everything uses;
* stages: synthesis, verify, optimize, distill, evaluation, and the signatures and programs they run;
* top: the CLI and the quickstart, which only orchestrate the stages. A training package (`refine.distill`,
  started by `accelerate launch -m refine.distill`) therefore never imports the CLI.

A module no floor names fails the test: a new module is placed on purpose.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import networkx as nx
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

GROUND, STAGES, TOP = 0, 1, 2
FLOOR_NAMES = {GROUND: "ground", STAGES: "stages", TOP: "top"}
# Module name prefix -> floor; the longest matching prefix decides.
FLOORS: dict[str, int] = {
    "refine": GROUND,  # the package face only (lazy names); every other module is placed below
    "refine.__main__": TOP,  # `python -m refine`: the CLI
    **dict.fromkeys(
        (
            "refine.data",
            "refine.codec",
            "refine.formats",
            "refine.chat_templates",
            "refine.export",
            "refine.store",
            "refine.redaction",
            "refine.health",
            "refine.errors",
            "refine.lm",
            "refine.envs",
            "refine.graph",
            "refine.graph_parts",
            "refine.executor",
            "refine.imports",
            "refine.interrupt",
            "refine.testing",
        ),
        GROUND,
    ),
    **dict.fromkeys(
        (
            "refine.synth",
            "refine.synthesis",
            "refine.saved_program",  # saved-program loading, below the registry
            "refine.personas",
            "refine.verify",
            "refine.optimizers",
            "refine.distill",
            "refine.eval",
            "refine.signatures",
            "refine.programs",
            "refine.programs_registry",
            "refine.preflight",
        ),
        STAGES,
    ),
    "refine.cli": TOP,
    "refine.quickstart": TOP,
    "refine.quickstart_effects": TOP,
}

# -- the graph ----------------------------------------------------------------------------------------------------


def package_dirs(root: Path) -> dict[str, Path]:
    """pyproject's `[tool.setuptools] package-dir`: package name -> its source folder."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def module_files(dirs: Mapping[str, Path]) -> dict[str, Path]:
    """Every module of the packages -> its file (`pkg/__init__.py` is the module `pkg`)."""
    modules: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts and f"{package}.{parts[0]}" in dirs:
                continue  # a folder remapped to its own package is walked as that package
            name = ".".join([package, *parts])
            modules[name] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(ast.walk(child))
    return skipped


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules one import statement runs (its targets and their package faces)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names.update(alias.name for alias in node.names)
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    targets: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:i])
            if prefix in known and not (module == prefix or module.startswith(prefix + ".")):
                targets.add(prefix)  # the importer's own packages are already being imported: no arrow
    return targets


def import_graph(dirs: Mapping[str, Path]) -> nx.DiGraph:
    """Module -> module arrows for every import that runs (module level, inside functions, through faces)."""
    files = module_files(dirs)
    known = set(files)
    graph = nx.DiGraph()
    graph.add_nodes_from(known)
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped = _type_checking_nodes(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and node not in skipped:
                for target in _imported(node, module, is_package, known):
                    graph.add_edge(module, target, line=node.lineno)
    return graph


# -- the rules ----------------------------------------------------------------------------------------------------


def cycles(graph: nx.DiGraph) -> list[tuple[list[str], str]]:
    """One concrete cycle per group of modules that import each other: (the group, 'a -> b -> a' from its first)."""
    found = []
    for group in nx.strongly_connected_components(graph):
        if len(group) < 2:
            continue
        nodes = [a for a, _ in nx.find_cycle(graph.subgraph(group))]
        start = nodes.index(min(nodes))
        nodes = nodes[start:] + nodes[:start]
        found.append((sorted(group), " -> ".join([*nodes, nodes[0]])))
    return sorted(found)


def floor_of(module: str, floors: Mapping[str, int]) -> int | None:
    """The floor of the longest entry that is `module` or a package above it (the top package names only itself)."""
    parts = module.split(".")
    for i in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        if ".".join(parts[:i]) in floors:
            return floors[".".join(parts[:i])]
    return None


def upward_arrows(graph: nx.DiGraph, floors: Mapping[str, int]) -> list[tuple[str, str, str]]:
    """(a, b, 'a (floor) -> b (higher floor), line N') for every arrow that points up."""
    found = []
    for a, b, data in graph.edges(data=True):
        fa, fb = floor_of(a, floors), floor_of(b, floors)
        if fa is not None and fb is not None and fb > fa:
            found.append((a, b, f"{a} ({FLOOR_NAMES[fa]}) -> {b} ({FLOOR_NAMES[fb]}), line {data['line']}"))
    return sorted(found)


def long_modules(files: Mapping[str, Path], limit: int = MAX_LINES) -> list[tuple[str, int]]:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in files.items()}
    return sorted((m, n) for m, n in sizes.items() if n > limit)


def violations(dirs: Mapping[str, Path], floors: Mapping[str, int]) -> list[tuple[str, tuple[str, ...], str]]:
    """Every violation as (kind, the modules involved, a one-line message naming the offenders)."""
    graph = import_graph(dirs)
    found: list[tuple[str, tuple[str, ...], str]] = []
    for members, path in cycles(graph):
        found.append(("cycle", tuple(members), f"import cycle: {path}"))
    for a, b, arrow in upward_arrows(graph, floors):
        found.append(("upward", (a, b), f"upward arrow: {arrow}"))
    for module in sorted(m for m in graph if floor_of(m, floors) is None):
        message = f"module on no floor: {module} (add it to FLOORS in tests/test_layout.py)"
        found.append(("unplaced", (module,), message))
    for module, lines in long_modules(module_files(dirs)):
        found.append(("long", (module,), f"module over {MAX_LINES} lines: {module} ({lines} lines)"))
    return found


def _messages(found: Iterable[tuple[str, tuple[str, ...], str]]) -> set[str]:
    return {message for _, _, message in found}


# -- the tests ----------------------------------------------------------------------------------------------------


def test_the_project_has_no_cycle_no_upward_arrow_and_no_long_module():
    found = violations(package_dirs(ROOT), FLOORS)
    assert not found, "\n".join(message for _, _, message in found)


def test_the_graph_sees_the_remapped_packages_and_imports_inside_functions():
    graph = import_graph(package_dirs(ROOT))
    assert {"refine.programs.agent", "refine.signatures.player", "refine.optimizers.prompt_opt.run"} <= set(graph)
    # programs/agent.py imports refine.signatures.player at module level; refine/eval/episode.py imports
    # refine.programs.agent inside a function.
    assert graph.has_edge("refine.programs.agent", "refine.signatures.player")
    assert graph.has_edge("refine.eval.episode", "refine.programs.agent")


def test_the_training_entry_does_not_import_the_cli():
    graph = import_graph(package_dirs(ROOT))
    reached = nx.descendants(graph, "refine.distill.__main__")
    assert not {m for m in reached if m == "refine.cli" or m.startswith("refine.cli.")}, sorted(reached)


# File names two modules may share, because the folder already says the rest (any other repeat is a same-name trap:
# two `report.py`, an eval report and a model card, read the same in a traceback or a search).
SHARED_NAMES = {
    "__init__.py": "package faces",
    "__main__.py": "`python -m` entries",
    "config.py": "each stage's own config (executor, distill, eval, prompt_opt)",
    "_common.py": "a package's private helpers (envs, cli)",
    "babyai.py": "envs/ and its AgentBoard variant envs/agentboard/",
    "pddl.py": "envs/ and its AgentBoard variant envs/agentboard/",
    "scienceworld.py": "envs/ and its AgentBoard variant envs/agentboard/",
    "self_refine.py": "one method: its signatures (signatures/) and its program (programs/), like every program",
}


def repeated_names(files: Mapping[str, Path]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for module, path in files.items():
        by_name.setdefault(path.name, []).append(module)
    return {name: sorted(mods) for name, mods in by_name.items() if len(mods) > 1 and name not in SHARED_NAMES}


def test_no_two_modules_share_a_file_name():
    repeats = repeated_names(module_files(package_dirs(ROOT)))
    assert not repeats, "same file name in two places (rename one to say what it holds): " + "; ".join(
        f"{name}: {', '.join(mods)}" for name, mods in sorted(repeats.items())
    )


def test_a_planted_repeated_name_is_named(tmp_path):
    files = module_files(_tree(tmp_path, {**CLEAN, "pkg/cli/base.py": ""}))
    assert repeated_names(files) == {"base.py": ["pkg.base", "pkg.cli.base"]}


# -- a test of the test: plant each kind of violation in a tiny tree ---------------------------------------------


def _tree(tmp_path: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": tmp_path / "pkg", "pkg.remapped": tmp_path / "remapped"}


CLEAN = {
    "pkg/__init__.py": "",
    "pkg/base.py": "import os\n",
    "pkg/stage.py": "from pkg import base\n",
    "pkg/cli/__init__.py": "from pkg.cli.app import main\n",
    "pkg/cli/app.py": "def main():\n    from pkg.stage import x\n",
    "remapped/__init__.py": "from pkg.remapped.part import y\n",
    "remapped/part.py": "from pkg.base import z\n",
}
TINY_FLOORS = {"pkg": 0, "pkg.base": 0, "pkg.stage": 1, "pkg.remapped": 1, "pkg.cli": 2}


def test_a_clean_tree_has_no_violation(tmp_path):
    assert violations(_tree(tmp_path, CLEAN), TINY_FLOORS) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (  # a cycle through a remapped package's face, from inside a function
            {"pkg/base.py": "def f():\n    from pkg.remapped import y\n", "remapped/part.py": "import pkg.base\n"},
            "import cycle: pkg.base -> pkg.remapped -> pkg.remapped.part -> pkg.base",
        ),
        (  # a relative import that closes a cycle
            {"pkg/base.py": "from . import stage\n", "pkg/stage.py": "from .base import z\n"},
            "import cycle: pkg.base -> pkg.stage -> pkg.base",
        ),
        (  # ground importing a stage, inside a function
            {"pkg/base.py": "def f():\n    import pkg.stage\n"},
            "upward arrow: pkg.base (ground) -> pkg.stage (stages), line 2",
        ),
        (  # a stage importing the CLI through its face
            {"pkg/stage.py": "from pkg.cli import main\n"},
            "upward arrow: pkg.stage (stages) -> pkg.cli (top), line 1",
        ),
        ({"pkg/new.py": ""}, "module on no floor: pkg.new (add it to FLOORS in tests/test_layout.py)"),
        ({"pkg/base.py": "x = 1\n" * 501}, "module over 500 lines: pkg.base (501 lines)"),
    ],
)
def test_each_planted_violation_is_named(tmp_path, planted, expected):
    found = _messages(violations(_tree(tmp_path, {**CLEAN, **planted}), TINY_FLOORS))
    assert expected in found, found


def test_type_checking_imports_do_not_count(tmp_path):
    planted = {"pkg/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.stage import s\n"}
    assert violations(_tree(tmp_path, {**CLEAN, **planted}), TINY_FLOORS) == []
