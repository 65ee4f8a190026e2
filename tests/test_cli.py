"""Tests of the `refine` CLI root: fast help, `graph show`, and one red line + exit 1 for user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "trl", "datasets", "dspy", "litellm", "networkx", "ray", "peft")

GRAPH_MODULE = textwrap.dedent(
    """
    import dspy
    from refine.graph import ProgramGraph

    def build():
        g = ProgramGraph("demo", inputs=["question"])
        g.add_node("answer", dspy.Predict("question -> answer"))
        g.add_node("done", lambda answer: answer, outputs=["final"])
        g.add_edge("answer", "done", condition="answer")
        return g

    graph = build()
    compiled = build().compile()
    broken = ProgramGraph("broken", inputs=["q"])
    broken.add_node("a", dspy.Predict("missing -> answer"))
    not_a_graph = 42

    def failing_factory():
        raise RuntimeError("no model configured")
    """
)

EXPECTED_MERMAID = 'flowchart TD\n    answer["answer<br/>Predict"]\n    done("done")\n    answer -->|answer| done\n'


def _refine(*args: str, tmp_path: Path, color: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "COLUMNS": "200",
    }
    env.pop("NO_COLOR", None)
    if color:
        env["FORCE_COLOR"] = "1"
    else:
        env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_demo_graphs.py").write_text(GRAPH_MODULE)
    return tmp_path


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "refine"
    assert script.exists(), "reinstall with `pip install -e .` so the `refine` console script exists"


def test_help_is_fast_and_imports_nothing_heavy(tmp_path):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = _refine("--help", tmp_path=tmp_path)
        best = min(best, time.perf_counter() - t0)
        assert out.returncode == 0, out.stderr
    assert "graph" in out.stdout
    assert best < 5.0, f"`refine --help` took {best:.2f} s (goal < 1.5 s): a command module imports something heavy"
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys, refine.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "[]", f"heavy modules imported by the CLI root: {probe.stdout}{probe.stderr}"


def test_the_cli_states_the_eval_stage_s_episode_deadline():
    from refine.cli import cmd_eval
    from refine.eval import config

    assert cmd_eval.EPISODE_S_PER_STEP == config.EPISODE_S_PER_STEP


@pytest.mark.parametrize("attr", ["graph", "compiled", "build"])
def test_graph_show_prints_mermaid(spec_dir, attr):
    out = _refine("graph", "show", f"cli_demo_graphs:{attr}", tmp_path=spec_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == EXPECTED_MERMAID


def test_graph_show_no_validate_renders_a_broken_graph(spec_dir):
    out = _refine("graph", "show", "cli_demo_graphs:broken", "--no-validate", tmp_path=spec_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == 'flowchart TD\n    a["a<br/>Predict"]\n'


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "nosuchprogram",
            "Error: Unknown program 'nosuchprogram'. Use a built-in name (agentrefine, interactive, reflexion, "
            "self_refine), 'package.module:attr', or a directory saved by `refine optimize`.",
        ),
        (
            "cli_demo_graphs:missing",
            "Error: Cannot import program 'cli_demo_graphs:missing': AttributeError: "
            "module 'cli_demo_graphs' has no attribute 'missing'",
        ),
        (
            "no_such_module_xyz:graph",
            "Error: Cannot import program 'no_such_module_xyz:graph': "
            "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        (
            "cli_demo_graphs:not_a_graph",
            "Error: Program 'cli_demo_graphs:not_a_graph' resolved to a int, not a ProgramGraph.",
        ),
        (
            "cli_demo_graphs:failing_factory",
            "Error: Program factory 'cli_demo_graphs:failing_factory' failed: RuntimeError: no model configured",
        ),
        (
            "cli_demo_graphs:broken",
            "Error: Node 'a' in graph 'broken' needs input 'missing', which no upstream node or graph input produces.",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_1(spec_dir, spec, message):
    out = _refine("graph", "show", spec, tmp_path=spec_dir)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert lines[0].startswith(message), lines[0]


def test_user_error_line_is_red(spec_dir):
    out = _refine("graph", "show", "nosuchprogram", tmp_path=spec_dir, color=True)
    assert out.returncode == 1
    assert "\x1b[1;31mError:\x1b[0m Unknown program 'nosuchprogram'" in out.stderr


def test_builtin_program_names_resolve_through_the_registry():
    from refine.programs_registry import BUILTIN, load_graph

    for name in sorted(BUILTIN):
        module = BUILTIN[name].partition(":")[0]
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} not written yet")
        assert load_graph(name).to_mermaid().startswith("flowchart TD\n"), name


def test_truncation_warnings_are_counted_not_printed_per_turn(caplog):
    import logging

    from refine.cli.app import _TruncationCounter

    counter = _TruncationCounter()
    logger = logging.getLogger("dspy.clients.lm")
    logger.addFilter(counter)
    try:
        with caplog.at_level(logging.WARNING, logger="dspy.clients.lm"):
            for _ in range(3):
                logger.warning("LM response was truncated due to exceeding max_tokens=8.")
            logger.warning("something else")
    finally:
        logger.removeFilter(counter)
    assert counter.count == 3
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_version_and_short_help(tmp_path):
    from refine import __version__

    out = _refine("--version", tmp_path=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"dspy-refine {__version__}"
    for args in (["-h"], ["synth", "-h"], ["lm", "check", "-h"]):
        out = _refine(*args, tmp_path=tmp_path)
        assert out.returncode == 0 and "Usage" in out.stdout, args


def test_usage_errors_are_one_line(tmp_path):
    out = _refine("distill", "data", "--max-steps", "-5", tmp_path=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--max-steps'"), out.stderr


def test_graph_show_imports_from_the_current_directory(tmp_path):
    """A console script does not put the current folder on sys.path; `refine` does, as the README promises."""
    (tmp_path / "cwd_graphs.py").write_text(GRAPH_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "refine"), "graph", "show", "cwd_graphs:graph"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == EXPECTED_MERMAID
