"""`refine optimize` end to end with the fake LM: dry-run estimate, a full run that writes a loadable program and
report, the budget options, and one red line for user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from typer.testing import CliRunner

from refine.cli.app import app
from refine.errors import ConfigError
from refine.optimizers import load_optimized
from tests.test_optimize_support import arith_rows

FAKE_LM = "py:tests.test_optimize_support:make_lm"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in arith_rows(6)) + "\n")
    dev.write_text("\n".join(json.dumps(r) for r in arith_rows(6, start=100)) + "\n")
    return train, dev


def _run(*args: str):
    return CliRunner().invoke(app, ["optimize", *args], catch_exceptions=True)


def test_dry_run_prints_the_estimate_and_writes_nothing(data, tmp_path):
    train, dev = data
    res = _run(
        "self_refine",
        "--method",
        "gepa",
        "--trainset",
        str(train),
        "--devset",
        str(dev),
        "--lm",
        FAKE_LM,
        "--max-calls",
        "100",
        "--dry-run",
        "--out",
        str(tmp_path / "o"),
    )
    assert res.exit_code == 0, res.output
    assert "Estimate for gepa (light)" in res.output
    assert "max_metric_calls=" in res.output
    assert "may not fit: the run stops cleanly" in res.output
    assert not (tmp_path / "o").exists()


def test_full_run_writes_program_and_report(data, tmp_path):
    train, dev = data
    out = tmp_path / "o"
    res = _run(
        "self_refine",
        "-m",
        "mipro",
        "--trainset",
        str(train),
        "--devset",
        str(dev),
        "--lm",
        FAKE_LM,
        "--option",
        "max_rounds=2",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "completed: score 0.500 -> 1.000" in res.output
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["program_options"] == {"max_rounds": 2}
    assert report["config"]["method"] == "mipro" and report["score_after"] == 1.0
    program = load_optimized(out)
    assert program.graph.describe()["edges"][-1]["max_iters"] == 2  # rebuilt with the recorded options
    from tests.test_optimize_support import make_lm

    with dspy.context(lm=make_lm()):
        assert program(task="What is 0 + 3?").output == "3"


def test_budget_option_stops_the_run(data, tmp_path):
    train, dev = data
    res = _run(
        "self_refine",
        "--trainset",
        str(train),
        "--devset",
        str(dev),
        "--lm",
        FAKE_LM,
        "--max-calls",
        "20",
        "--out",
        str(tmp_path / "o"),
    )
    assert res.exit_code == 0, res.output
    assert "budget_exhausted" in res.output and "20/20 calls used" in res.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["spend"]["calls"] == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "sgd"], "--method: Input should be 'bootstrap', 'mipro' or 'gepa'"),
        (["--option", "rounds"], "--option 'rounds' must look like key=value"),
        (["--metric", "nope"], "Unknown metric 'nope'"),
    ],
)
def test_user_errors_are_config_errors(data, tmp_path, args, message):
    train, _ = data
    res = _run("self_refine", "--trainset", str(train), "--lm", FAKE_LM, "--out", str(tmp_path / "o"), *args)
    assert isinstance(res.exception, ConfigError)
    assert message in str(res.exception)


def test_missing_out_or_trainset(data):
    train, _ = data
    res = _run("self_refine", "--trainset", str(train), "--lm", FAKE_LM)
    assert isinstance(res.exception, ConfigError) and "Pass --out DIR" in str(res.exception)
    res = _run("self_refine", "--lm", FAKE_LM, "--dry-run")
    assert isinstance(res.exception, ConfigError) and "Pass --trainset FILE" in str(res.exception)


def test_error_is_one_red_line_and_exit_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from refine.cli import main; main()",
            "optimize",
            "self_refine",
            "--dry-run",
            "--trainset",
            str(tmp_path / "missing.jsonl"),
            "--lm",
            FAKE_LM,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: Dataset file '{tmp_path / 'missing.jsonl'}' does not exist. "
        "Pass a JSONL file with one example per line."
    ]


def test_optimized_agentrefine_runs_in_refine_synth(tmp_path):
    personas = tmp_path / "personas.jsonl"
    personas.write_text("\n".join(json.dumps({"persona": f"persona number {i}"}) for i in range(4)) + "\n")
    teacher = "py:tests.test_synth_support:make_lm"
    out = tmp_path / "opt"
    res = _run("agentrefine", "--trainset", str(personas), "--lm", teacher, "--out", str(out))
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app,
        [
            "synth",
            "--program",
            str(out),
            "--lm",
            teacher,
            "--personas",
            str(personas),
            "-n",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        catch_exceptions=True,
    )
    assert res.exit_code == 0, (res.output, res.exception)
    records = [json.loads(line) for p in (tmp_path / "run").rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(records) == 2
    from refine.graph import program_hash
    from refine.programs_registry import load_graph

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["program_hash"] == program_hash(load_optimized(out))  # the optimized program ran
    assert manifest["program_hash"] != program_hash(load_graph("agentrefine").compile())


def _hang_run(tmp_path, monkeypatch, server, *extra: str):
    """`refine optimize` of self_refine against `server` (1 train and 1 dev row) with a 0.5 s call timeout."""
    import uuid

    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text(json.dumps(arith_rows(1)[0]) + "\n")
    dev.write_text(json.dumps(arith_rows(1, start=100)[0]) + "\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    monkeypatch.setenv("OPENAI_API_BASE", server.url)  # --api-base sets it in-process; restored after the test
    monkeypatch.delenv("REFINE_NO_PREFLIGHT", raising=False)
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "dspy_cache"))
    model = f"openai/fake-{uuid.uuid4().hex[:8]}"  # DSPy's cache ignores api_base: no answer from another test
    args = ["self_refine", "--trainset", str(train), "--devset", str(dev), "--lm", model, "--api-base", server.url]
    return _run(*args, "--timeout", "0.5", "--out", str(tmp_path / "o"), *extra)


def test_a_hanging_server_fails_the_preflight_call_within_the_timeout(tmp_path, monkeypatch):
    import time

    from refine.errors import LMError
    from tests.fault_server import FaultServer

    with FaultServer(fault_rate=1.0, faults=("hang",), hang_s=30) as server:
        t0 = time.monotonic()
        res = _hang_run(tmp_path, monkeypatch, server)
        wall = time.monotonic() - t0
    assert wall < 15, wall  # the probe waits --timeout (0.5 s), not its former fixed 60 s
    assert isinstance(res.exception, LMError) and server.calls == 1
    message = str(res.exception)
    assert message.startswith("LM openai/fake-") and "(--lm) is not usable: cannot reach http://127.0.0.1:" in message
    assert "Timeout" in message and not (tmp_path / "o").exists()


def test_a_server_that_starts_hanging_fails_the_run_within_a_bound(tmp_path, monkeypatch):
    """Every call of the run times out (the probe was answered): every devset run of the baseline fails, so the run
    is a failed run with one line (it used to end `completed: score 0.000 -> 0.000` after optimizing against
    nothing), and it ends in seconds, not hours."""
    import time

    from refine.errors import RunFailedError
    from tests.fault_server import FaultServer

    with FaultServer(fault_rate=1.0, faults=("hang",), hang_s=30, faults_after=1) as server:
        t0 = time.monotonic()
        res = _hang_run(tmp_path, monkeypatch, server)
        wall = time.monotonic() - t0
    # The probe, then one devset run x 4 attempts (DSPy's 3 retries) of 0.5 s plus LiteLLM's backoff; at the former
    # 60 s per call that is at least 4 minutes.
    assert wall < 30, wall
    assert server.calls == 1 + 4
    assert isinstance(res.exception, RunFailedError), res.output
    assert str(res.exception) == (
        "every one of the 1 devset runs of the un-optimized program failed (the errors are logged above), so there "
        "is no score to improve: check the LM (`refine lm check MODEL`), then rerun."
    )


def test_timeout_is_a_setting_of_the_config_file_and_print_config(tmp_path):
    (tmp_path / "cfg.toml").write_text("[optimize]\ntimeout = 2.5\n")
    res = _run("--config", str(tmp_path / "cfg.toml"), "--print-config")
    assert res.exit_code == 0, res.output
    assert "\ntimeout = 2.5\n" in res.output
    assert "\ntimeout = 60.0\n" in _run("--print-config").output
