"""Reliability of synthesis: kill -9 and resume, a flaky LM, fuzzed parsers/verifier, and no leaked API keys."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refine.data import ActionSpec, Script, Trajectory, Turn, Verdict
from refine.export import export_run
from refine.programs import AgentRefinePipeline
from refine.synth import SynthConfig, run_synth
from refine.testing import ScriptedLM
from refine.verify import match_action, verify_script, verify_trajectory
from tests.test_synth_support import make_flaky_lm, make_lm, script_draft, tea_script, teacher_respond

REPO = Path(__file__).resolve().parents[1]
FAKE = "py:tests.test_synth_support:make_lm"


def _keys(run: Path) -> list[str]:
    keys = []
    for kind in ("accepted", "rejected"):
        p = run / f"{kind}.jsonl"
        if p.exists():
            keys += [json.loads(line)["key"] for line in p.read_text().splitlines() if line.strip()]
    return keys


def _ids(run: Path) -> dict[str, str]:
    out = {}
    for kind in ("accepted", "rejected"):
        p = run / f"{kind}.jsonl"
        if p.exists():
            for line in p.read_text().splitlines():
                rec = json.loads(line)
                out[rec["key"]] = f"{kind}:{rec['id']}"
    return out


def kill_and_resume_trial(tmp: Path, rng: random.Random, n: int = 12) -> float:
    """Start `refine synth` in a subprocess, kill -9 it at a random moment, resume in-process; return the delay."""
    run = tmp / f"run{rng.random():.6f}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "REFINE_FAKE_LATENCY": "0.05"}
    cmd = [
        sys.executable,
        "-c",
        "from refine.cli import main; main()",
        "synth",
        "-q",
        "--n",
        str(n),
        "--lm",
        FAKE,
        "--out",
        str(run),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = rng.uniform(0.8, 2.6)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_synth(SynthConfig(n=n, lm=FAKE, workers=2), run, resume=True, lm=make_lm())
    return delay


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, str]:
    run = tmp_path_factory.mktemp("base") / "run"
    run_synth(SynthConfig(n=12, lm=FAKE, workers=2), run, lm=make_lm())
    return _ids(run)


@pytest.mark.parametrize("trial", range(10))
def test_kill9_then_resume_equals_uninterrupted_run(tmp_path, baseline, trial):
    kill_and_resume_trial(tmp_path, random.Random(1000 + trial))
    run = next(tmp_path.glob("run*"))
    keys = _keys(run)
    assert len(keys) == len(set(keys)), "duplicate records after resume"
    assert _ids(run) == baseline
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["totals"]["records"] == 12


def test_flaky_lm_run_completes_and_records_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINE_FAKE_FAILURE_RATE", "0.3")
    lm = make_flaky_lm()
    run = tmp_path / "run"
    # No JSON fallback, as with the grammar adapter of in-process models: every malformed answer surfaces.
    with dspy.context(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        totals = run_synth(SynthConfig(n=10, lm="py:tests.test_synth_support:make_flaky_lm", workers=8), run, lm=lm)
    engine = lm.script_engine
    assert totals["records"] == 10 and totals["pending"] == 0 and totals["errors"] == 0
    assert engine.failures["timeout"] > 0 and engine.failures["rate_limit"] > 0 and engine.failures["malformed"] > 0
    records = [
        json.loads(line)
        for k in ("accepted", "rejected")
        if (run / f"{k}.jsonl").exists()
        for line in (run / f"{k}.jsonl").open()
    ]
    # Timeouts and rate limits are retried by DSPy (num_retries, exponential backoff) below the program: the engine
    # was invoked more often than the program saw LM calls, by exactly the retried failures.
    invocations = engine.calls + sum(engine.failures.values())
    seen_by_program = sum(r["lm_calls"] for r in records)
    exhausted = sum(u.get("failed_calls", 0) for r in records for u in r["usage"].values())
    raised = engine.failures["timeout"] + engine.failures["rate_limit"]
    assert invocations - seen_by_program == raised - exhausted > 0
    # Every malformed answer became a recorded attempt failure with its reason, and the stage was regenerated.
    errors = [a["error"] for r in records for a in r["attempts"] if a["error"]]
    parse_errors = [e for e in errors if "AdapterParseError" in e]
    assert len(parse_errors) == engine.failures["malformed"]
    assert all(e.split(":")[0] in ("generate_script", "generate_trajectory") for e in errors)
    for r in records:
        assert r["verdict"]["ok"] == (r["verdict"]["reasons"] == [])


# ---------------------------------------------------------------------------------------------- fuzzing
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_regexish = st.text(alphabet="ab()[]{}*+?|^$.\\:<>Pw0123 ", max_size=30)


@st.composite
def scripts(draw):
    actions = draw(
        st.lists(
            st.builds(
                ActionSpec,
                name=_text,
                description=_text,
                pattern=st.one_of(_regexish, st.just(r"^take (?P<obj>\w+)$"), st.just(r"^(a|aa)+$")),
                parameters=st.dictionaries(
                    st.sampled_from(["obj", "x", "P", ""]), st.lists(_text, max_size=3), max_size=2
                ),
            ),
            max_size=4,
        )
    )
    return Script(environment=draw(_text), tasks=draw(st.lists(_text, max_size=2)), actions=actions)


@st.composite
def turns(draw):
    return draw(
        st.lists(
            st.builds(
                Turn,
                role=st.sampled_from(["player", "dm"]),
                thought=_text,
                action=st.one_of(st.none(), _text, st.just("take kettle"), st.just("a" * 30 + "!")),
                observation=st.one_of(st.none(), _text),
                parameter_error=st.booleans(),
                place_error=st.booleans(),
                logic_error=st.booleans(),
                task_completed=st.booleans(),
            ),
            max_size=10,
        )
    )


def _check_verdict(v: Verdict, stage: str) -> None:
    assert isinstance(v, Verdict) and v.stage == stage and v.ok == (not v.reasons) and v.checks >= 1
    assert 0.0 <= v.score <= 1.0


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts(), st.lists(_text, max_size=4))
def test_fuzz_verify_script_and_match_action(script, actions):
    t0 = time.perf_counter()
    _check_verdict(verify_script(script), "script")
    for a in actions:
        spec, params, problems = match_action(script, a)
        assert (spec is None) <= bool(problems)
        assert isinstance(params, dict)
    assert time.perf_counter() - t0 < 5.0


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(scripts(), st.just(tea_script())), turns(), st.integers(min_value=0, max_value=3))
def test_fuzz_verify_trajectory(script, ts, k):
    _check_verdict(verify_trajectory(Trajectory(script=script, turns=ts), min_refinements=k), "trajectory")


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _text),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_text, children, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, st.just(script_draft(tea_script()))), st.one_of(_json, _text), st.booleans())
def test_fuzz_pipeline_parsers_never_crash(script_value, turns_value, raw):
    """Arbitrary LM answers for the script and the turns: the program always returns a verdict, never raises."""

    def respond(fields, inputs, messages):
        if "script" in fields:
            return json.dumps(script_value) if raw else {"script": script_value}
        if "turns" in fields:
            return str(turns_value) if raw else {"turns": turns_value}
        return teacher_respond(fields, inputs, messages)

    with dspy.context(lm=ScriptedLM(respond)):
        out = AgentRefinePipeline(max_attempts=2)(persona="p")
    assert isinstance(out.trajectory, Trajectory) and isinstance(out.verdict, Verdict)
    assert out.attempts and all(isinstance(a["reasons"], list) for a in out.attempts)
    if not out.verdict.ok:
        assert out.verdict.reasons


# ---------------------------------------------------------------------------------------------- secrets
def test_no_api_key_from_the_environment_lands_in_a_run_or_export(tmp_path, monkeypatch):
    secret = "sk-live-THIS-IS-A-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret[::-1])

    def leaky(fields, inputs, messages):  # an LM that repeats the keys it somehow saw
        out = teacher_respond(fields, inputs, messages)
        if "script" in fields:
            out["script"]["environment"] += f" The password is {secret} and {secret[::-1]}."
        return out

    persona_file = tmp_path / "p.jsonl"
    persona_file.write_text(json.dumps({"persona": f"an admin whose key is {secret}"}) + "\n")
    run = tmp_path / "run"
    run_synth(SynthConfig(n=3, lm=FAKE, personas=str(persona_file)), run, lm=ScriptedLM(leaky))
    assert (run / "accepted.jsonl").exists() or (run / "rejected.jsonl").exists()
    for fmt, name in [("messages", "m.jsonl"), ("sharegpt", "s.json"), ("hf", "hf")]:
        try:
            export_run(run, fmt, tmp_path / "exports" / name)
        except Exception as exc:  # only "nothing accepted" is acceptable here
            assert "no accepted trajectory" in str(exc)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != persona_file]
    assert len(files) >= 3
    for p in files:
        data = p.read_bytes()
        assert secret.encode() not in data, p
        assert secret[::-1].encode() not in data, p
