"""A server that refuses the API key (HTTP 401/403) stops synth and eval (issues #16 item 5, #17 item 1): one line
naming the variable to fix, exit 1, the manifest `failed` with the reason; never retried as transient, never stored
as one rejected item after another, and the items made before the key was refused are kept for --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import dspy
import pytest

from refine.envs.base import ToyEnv
from refine.errors import LMAuthError
from refine.eval import EvalConfig, evaluate
from refine.lm.failures import auth_failure
from refine.programs.agent import ChatAgent
from refine.synth import SynthConfig, is_transient, run_synth
from tests.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]


def _lm(server: FaultServer, **kw) -> dspy.LM:
    kw.setdefault("num_retries", 3)  # a refused key must not be retried even where transient errors are
    return dspy.LM(
        f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key="sk-local-test", timeout=10, **kw
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _refine(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "250", **env}
    return subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd, capture_output=True, text=True, env=full, timeout=300,
    )  # fmt: skip


def _personas(tmp_path: Path) -> str:
    p = tmp_path / "personas.txt"
    p.write_text("a baker\na sailor\n")
    return str(p)


KEY_401 = "Incorrect API key provided"
MESSAGE = (
    "refused the API key of openai/fake-{} (HTTP {}: {}): set the right key in OPENAI_API_KEY (or pass "
    "--api-key-env NAME for the variable that holds it), then rerun with --resume; the items already made are kept."
)


@pytest.mark.parametrize(("status", "detail"), [(401, "Incorrect API key provided"), (403, "This key may not use")])
def test_a_refused_key_is_a_run_failure_not_transient(status, detail):
    with FaultServer(fault_rate=1.0, faults=(str(status),)) as server:
        lm = _lm(server)
        with pytest.raises(Exception) as caught:
            lm("hi")
        assert server.calls == 1  # DSPy did not retry it
    assert not is_transient(caught.value)
    failure = auth_failure(caught.value, lm)
    assert isinstance(failure, LMAuthError)
    assert str(failure).startswith(f"The LM server at {server.url} refused the API key of {lm.model} (HTTP {status}: ")
    assert detail in str(failure) and "OPENAI_API_KEY" in str(failure) and "--api-key-env" in str(failure)
    assert auth_failure(ConnectionError("refused"), lm) is None


def test_a_refused_key_from_api_key_env_names_that_variable(monkeypatch):
    from refine.lm import get_lm
    from refine.lm.failures import KEY_ENV_VAR

    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    monkeypatch.setenv("MY_PROXY_KEY", "sk-local-test")
    with FaultServer(fault_rate=1.0, faults=("401",)) as server:
        lm = get_lm(f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key_env="MY_PROXY_KEY")
        with pytest.raises(Exception) as caught:
            lm("hi")
    message = str(auth_failure(caught.value, lm))
    assert (
        "): set the right key in MY_PROXY_KEY (the variable --api-key-env names), then rerun with --resume" in message
    )
    assert "OPENAI_API_KEY" not in message and "sk-local-test" not in message
    # Commands that pass the key on as OPENAI_API_KEY (optimize, quickstart) note the name in the environment.
    monkeypatch.setenv(KEY_ENV_VAR, "TEAM_KEY")
    assert "set the right key in TEAM_KEY (the variable" in str(auth_failure(caught.value, _lm(server)))


def test_synth_stops_at_a_refused_key_and_keeps_what_it_made(tmp_path):
    run = tmp_path / "run"
    with FaultServer(fault_rate=1.0, faults=("401",), faults_after=30) as server:  # the key is revoked mid-run
        lm = _lm(server)
        cfg = SynthConfig(lm=lm.model, personas=_personas(tmp_path), n=40, workers=2, max_attempts=1, retries=3)
        with pytest.raises(LMAuthError, match=r"refused the API key of openai/fake-\w+ \(HTTP 401: Incorrect API key"):
            run_synth(cfg, run, lm=lm)
        calls = server.calls
    made = _lines(run / "accepted.jsonl") + _lines(run / "rejected.jsonl")
    assert 1 <= len(made) < 40  # the items made before the key was refused are kept...
    assert not any("Incorrect API key" in json.dumps(r) for r in made)  # ...and none is a rejection for the key
    assert not _lines(run / "errors.jsonl")  # not a transient failure either
    assert calls < 30 + 2 * 2 + 2  # the queued items never started; no retries, no backoff rounds
    manifest = _manifest(run)
    assert manifest["status"] == "failed" and "refused the API key" in manifest["failure"]


def test_a_key_given_in_code_and_echoed_by_a_401_is_not_stored(tmp_path, caplog):
    key = "sk-given-in-code-" + uuid.uuid4().hex
    with FaultServer(echo_key=True) as server:
        lm = dspy.LM(f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key=key, num_retries=0)
        cfg = SynthConfig(lm=lm.model, personas=_personas(tmp_path), n=2, max_attempts=1)
        with pytest.raises(LMAuthError) as caught:
            run_synth(cfg, tmp_path / "run", lm=lm)
    assert key not in str(caught.value) and "Incorrect API key provided" in str(caught.value)
    for p in (tmp_path / "run").iterdir():
        if p.is_file():
            assert key not in p.read_text(), p.name
    assert key not in caplog.text
    assert _manifest(tmp_path / "run")["status"] == "failed"


def test_synth_cli_refused_key_is_one_line_and_exit_1(tmp_path):
    run = tmp_path / "run"
    model = uuid.uuid4().hex[:8]
    with FaultServer(fault_rate=1.0, faults=("401",), faults_after=1) as server:  # the preflight probe passes
        out = _refine(
            "synth", "--lm", f"openai/fake-{model}", "--api-base", server.url, "--personas", _personas(tmp_path),
            "--n", "6", "--workers", "2", "--out", str(run), "-q", cwd=tmp_path, OPENAI_API_KEY="sk-local-test",
            DSPY_CACHEDIR=str(tmp_path / "dspy_cache"),
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0] == f"Error: The LM server at {server.url} " + MESSAGE.format(model, 401, KEY_401)
    manifest = _manifest(run)
    assert manifest["status"] == "failed" and manifest["failure"] == lines[0].removeprefix("Error: ")
    assert not _lines(run / "rejected.jsonl") and not _lines(run / "errors.jsonl")


def test_eval_stops_at_a_refused_key_instead_of_playing_failed_turns(tmp_path):
    run = tmp_path / "run"
    cfg = EvalConfig(envs=["toy"], episodes=6, workers=2, max_steps=4)
    with FaultServer(fault_rate=1.0, faults=("403",)) as server:
        agent = ChatAgent(_lm(server), max_turns=None)
        with pytest.raises(LMAuthError, match=r"\(HTTP 403: This key may not use this model\): set the right key"):
            evaluate(agent, cfg, run, env_factory=lambda name, perturbed: ToyEnv())
        # One call per episode that started (at most the pool's window of 4); retried or played on, 2 episodes of 4
        # turns with 3 retries each would have made 32.
        assert server.calls <= 4
    manifest = _manifest(run)
    assert manifest["status"] == "failed" and "refused the API key" in manifest["failure"]
    assert not _lines(run / "episodes.jsonl")


def test_eval_cli_refused_key_is_one_line_and_exit_1(tmp_path):
    run = tmp_path / "run"
    model = uuid.uuid4().hex[:8]
    with FaultServer(fault_rate=1.0, faults=("401",), faults_after=1) as server:
        out = _refine(
            "eval", "--agent", f"openai/fake-{model}", "--api-base", server.url, "--envs", "toy", "--episodes", "3",
            "--max-steps", "3", "--out", str(run), "-q", cwd=tmp_path, OPENAI_API_KEY="sk-local-test",
            DSPY_CACHEDIR=str(tmp_path / "dspy_cache"),
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0] == f"Error: The LM server at {server.url} " + MESSAGE.format(model, 401, KEY_401)
    assert _manifest(run)["status"] == "failed"
