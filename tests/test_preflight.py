"""Careless input fails before any work: one red line naming the cause and the fix, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refine.errors import ConfigError, LMError
from refine.preflight import check_lm, parse_program_options
from tests.openai_stub import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
FAKE = "py:tests.test_synth_support:make_lm"


def _refine(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "250", **env}
    for key in [k for k, v in env.items() if v is None]:
        full.pop(key, None)
    return subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={k: v for k, v in full.items() if v is not None},
        timeout=300,
    )


def _one_error_line(out: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# ---------------------------------------------------------------------------------------------- LM specs (unit)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("embeded", r"Unknown LM 'embeded' \(--lm\); did you mean 'embedded'\?"),
        ("smollm", r"Unknown LM 'smollm' \(--lm\): .*LiteLLM knows no provider.*The in-process SmolLM2 .* 'embedded'"),
        ("openai/gpt-4o-mini-typo", r"Unknown openai model 'gpt-4o-mini-typo' .*did you mean 'openai/gpt-4o-mini'\?"),
        ("local/does/not/exist", r"does not exist|not found|no such"),
        ("py:nothing", r"must look like 'py:package\.module:factory'"),
        ("", r"--lm is empty"),
    ],
)
def test_check_lm_rejects_bad_specs(spec, message, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises((ConfigError, LMError), match=message):
        check_lm(spec)


def test_missing_key_names_the_variable_and_the_flag(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"No API key for openai/gpt-4o-mini \(--lm\): set OPENAI_API_KEY"):
        check_lm("openai/gpt-4o-mini")


def test_local_server_without_key_gets_the_placeholder_hint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"needs no key still needs a placeholder: set OPENAI_API_KEY=EMPTY"):
        check_lm("openai/qwen", api_base="http://127.0.0.1:9/v1")


def test_api_key_env_must_be_set(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"--api-key-env NO_SUCH_KEY_VAR: the environment variable"):
        check_lm("openai/qwen", api_base="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR")


def test_unreachable_server_fails_the_probe(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    with pytest.raises(LMError, match=r"cannot reach http://127\.0\.0\.1:9/v1: is the server running"):
        check_lm("openai/qwen", api_base="http://127.0.0.1:9/v1")


def test_probe_sends_one_short_call_with_the_key_from_api_key_env(monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "sk-test-123456")
    with FakeOpenAI() as server:
        check_lm("openai/qwen", api_base=server.base, api_key_env="MY_SERVER_KEY")
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req["path"].endswith("/chat/completions")
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test-123456"
    assert req["body"]["max_tokens"] == 16 and req["body"]["temperature"] == 0.0  # classic name: servers read it


def test_get_lm_always_sends_max_tokens_and_temperature(monkeypatch):
    from refine.lm import get_lm

    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    with FakeOpenAI() as server:
        lm = get_lm("openai/qwen", api_base=server.base, cache=False)
        lm("hi")
        get_lm("openai/qwen", api_base=server.base, cache=False, max_tokens=77, temperature=0.5)("hello")
    first, second = (r["body"] for r in server.requests)
    assert (first["max_tokens"], first["temperature"]) == (1024, 0.0)
    assert (second["max_tokens"], second["temperature"]) == (77, 0.5)


# ---------------------------------------------------------------------------------------------- typed --option
def test_program_options_are_typed_by_the_factory_signature():
    assert parse_program_options(["max_rounds=2", "chain_of_thought=true"], "self_refine") == {
        "max_rounds": 2,
        "chain_of_thought": True,
    }
    with pytest.raises(ConfigError, match=r"--option max_rounds='two': Input should be a valid integer"):
        parse_program_options(["max_rounds=two"], "self_refine")
    with pytest.raises(ConfigError, match=r"has no option 'max_round'; did you mean 'max_rounds'\?"):
        parse_program_options(["max_round=2"], "self_refine")
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        parse_program_options(["max_rounds"], "self_refine")


# ---------------------------------------------------------------------------------------------- the CLI
def test_synth_with_a_typo_lm_fails_before_any_work(tmp_path):
    out = _refine("synth", "--lm", "smollm", "--out", str(tmp_path / "run"), cwd=tmp_path)
    line = _one_error_line(out)
    assert "Unknown LM 'smollm'" in line
    assert not (tmp_path / "run").exists()


def test_synth_without_key_fails_before_any_work(tmp_path):
    run = str(tmp_path / "run")
    out = _refine("synth", "--lm", "openai/gpt-4o-mini", "--out", run, cwd=tmp_path, OPENAI_API_KEY=None)
    assert "set OPENAI_API_KEY" in _one_error_line(out)
    assert not (tmp_path / "run").exists()


def test_personas_csv_without_a_persona_column_is_refused(tmp_path):
    (tmp_path / "people.csv").write_text("name,age\nAda,36\nLinus,28\n")
    out = _refine("synth", "--lm", FAKE, "--personas", "people.csv", "--out", str(tmp_path / "run"), cwd=tmp_path)
    line = _one_error_line(out)
    assert "people.csv" in line and "'persona'" in line
    assert not (tmp_path / "run").exists()


def test_load_personas_refuses_a_csv_header_without_a_persona_column(tmp_path):
    """The check lives in the loader, so the Python API refuses it too; a headerless CSV loads its first column."""
    from refine.personas import load_personas

    (tmp_path / "people.csv").write_text("name,age\nAda,36\n")
    header = r"people\.csv has no 'persona' \(or 'text'\) column \(its header: name, age\)"
    with pytest.raises(ConfigError, match=header):
        load_personas(tmp_path / "people.csv")
    (tmp_path / "plain.csv").write_text("A retired sailor, 70,Lisbon\nA nurse on night shifts,Oslo\n")
    assert load_personas(tmp_path / "plain.csv") == ["A retired sailor", "A nurse on night shifts"]


def test_optimize_option_of_the_wrong_type_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"task": "write a haiku"}\n')
    out = _refine(
        "optimize",
        "self_refine",
        "--trainset",
        "train.jsonl",
        "--lm",
        FAKE,
        "--option",
        "max_rounds=two",
        "--dry-run",
        cwd=tmp_path,
    )
    assert "--option max_rounds='two': Input should be a valid integer" in _one_error_line(out)


def test_a_run_where_every_item_failed_ends_failed(tmp_path):
    """The server answers 'OK' to everything: no item can parse, so the run is failed, not 'finished'."""
    run = tmp_path / "run"
    with FakeOpenAI() as server:
        out = _refine(
            "synth",
            "--lm",
            "openai/fake-teacher",
            "--api-base",
            server.base,
            "--api-key-env",
            "FAKE_SERVER_KEY",
            "--n",
            "2",
            "--workers",
            "2",
            "--max-attempts",
            "1",
            "--out",
            str(run),
            "-q",
            cwd=tmp_path,
            FAKE_SERVER_KEY="sk-fake-0000000",
            DSPY_CACHEDIR=str(tmp_path / "dspy_cache"),
        )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "The synthesis run failed (all 2 items failed:" in out.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failure"].startswith("all 2 items failed")
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) >= 3  # the probe, then the items' calls
    assert all(b.get("max_tokens") and "temperature" in b for b in bodies)
    assert bodies[-1]["max_tokens"] == 2048  # synthesis answers are long: the server's own cap would cut them
    assert "sk-fake-0000000" not in (run / "manifest.json").read_text()
