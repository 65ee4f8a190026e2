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


# Figures for benchmarks/RESULTS.md ("Reliability"): with REFINE_RELIABILITY_LOG=FILE each test below appends one
# JSON line (what it tried, and what was lost or duplicated).
def _log(**figures) -> None:
    path = os.environ.get("REFINE_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


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


@pytest.mark.parametrize("trial", range(20))
def test_kill9_then_resume_equals_uninterrupted_run(tmp_path, baseline, trial):
    kill_and_resume_trial(tmp_path, random.Random(1000 + trial))
    run = next(tmp_path.glob("run*"))
    keys = _keys(run)
    _log(test="kill9_synth", trials=1, items=12, lost=12 - len(set(keys)), duplicated=len(keys) - len(set(keys)))
    assert len(keys) == len(set(keys)), "duplicate records after resume"
    assert _ids(run) == baseline
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["totals"]["records"] == 12


# ------------------------------------------------------------------------------------- kill -9 of exports
_EXPORT_OUT = {"messages": "e.jsonl", "sharegpt": "e.json", "agentgym": "e.json", "agentrefine": "e.json"}


def _export_run(path: Path, n: int, prefix: str) -> Path:
    from refine.data import RunRecord
    from refine.store import RunStore
    from tests.test_export import _traj

    with RunStore(path, config={"n": n}) as store:
        for i in range(n):
            rec = RunRecord(key=f"{prefix}{i}", accepted=True, trajectory=_traj(f"{prefix} persona {i}", i))
            store.append("accepted", rec.to_json(), key=f"{prefix}{i}")
        store.finish(totals={"accepted": n})
    return path


@pytest.fixture(scope="module")
def export_sources(tmp_path_factory) -> dict[str, object]:
    """A small run (the previous good export) and a big one (2,000 trajectories, ~7 MB: the export that is killed)."""
    from refine.export import load_export

    root = tmp_path_factory.mktemp("export-sources")
    small, big = _export_run(root / "small", 5, "old"), _export_run(root / "big", 2000, "new")
    ids = {}
    for name, run in (("small", small), ("big", big)):
        export_run(run, "messages", root / f"{name}.jsonl")
        ids[name] = [r["id"] for r in load_export(root / f"{name}.jsonl")]
    assert not set(ids["small"]) & set(ids["big"])
    return {"small": small, "big": big, "ids": ids}


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name != out.name]


@pytest.mark.parametrize("trial", range(20))
def test_kill9_during_export_keeps_the_previous_good_export_and_a_rerun_succeeds(tmp_path, export_sources, trial):
    """`refine export` killed with SIGKILL while it writes (every format, hf included): `--out` is always the previous
    good export or the new complete one, never a torn one; only hidden temporaries are left, and a re-run succeeds."""
    from refine.export import FORMATS, load_export

    rng = random.Random(2000 + trial)
    fmt = FORMATS[trial % len(FORMATS)]
    out = tmp_path / "exports" / _EXPORT_OUT.get(fmt, f"e-{fmt}")
    ids = export_sources["ids"]
    export_run(export_sources["small"], fmt, out)
    assert [r["id"] for r in load_export(out)] == ids["small"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", "from refine.cli import main; main()", "export", str(export_sources["big"])]
    proc = subprocess.Popen([*cmd, "-f", fmt, "-o", str(out)], env=env, stdout=subprocess.DEVNULL)
    # Kill while the export is being written: a random moment after its temporary appears beside `out`.
    deadline = time.time() + 60
    while not any(".tmp-" in p.name for p in out.parent.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    mid_write = any(".tmp-" in p.name for p in _leftovers(out))
    now = [r["id"] for r in load_export(out)]  # raises on a torn or missing export
    assert now in (ids["small"], ids["big"]), f"{fmt}: --out holds neither the old nor the new export"
    assert all(p.name.startswith(f".{out.name}.") for p in _leftovers(out)), _leftovers(out)
    export_run(export_sources["big"], fmt, out)
    again = [r["id"] for r in load_export(out)]
    _log(
        test="kill9_export",
        format=fmt,
        trials=1,
        killed_mid_write=int(mid_write),
        kept_previous=int(now == ids["small"]),
        lost=len(set(ids["big"]) - set(again)),
        duplicated=len(again) - len(set(again)),
    )
    assert again == ids["big"]
    assert _leftovers(out) == [], "the re-run left temporaries behind"


def test_an_export_killed_between_its_two_renames_is_restored_by_the_next_run(tmp_path, export_sources, monkeypatch):
    """Where the OS cannot swap two folders in one step, a kill between the two renames leaves the old export in a
    hidden folder; the next export puts it back before anything else (and a failing one leaves it in place)."""
    import refine.export as ex

    out = tmp_path / "hf"
    export_run(export_sources["small"], "hf", out)
    monkeypatch.setattr(ex, "_exchange", lambda a, b: False)
    real, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, after `out` moved aside and before the new folder moved in
        return real(src, dst)

    monkeypatch.setattr(ex.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        export_run(export_sources["big"], "hf", out)
    monkeypatch.setattr(ex.os, "replace", real)
    assert not out.exists() and any(".old-" in p.name for p in tmp_path.iterdir())
    with pytest.raises(ex.ExportError, match="--template 'nope' is not one of"):
        export_run(export_sources["small"], "trl", tmp_path / "trl", template="nope")
    ex._clean_stale(out)
    assert [r["id"] for r in ex.load_export(out)] == export_sources["ids"]["small"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


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


# ---------------------------------------------------------------------------------------------- issue #16
def _all_records(run: Path) -> list[dict]:
    return [
        json.loads(line)
        for k in ("accepted", "rejected")
        if (run / f"{k}.jsonl").exists()
        for line in (run / f"{k}.jsonl").read_text().splitlines()
    ]


def test_injected_faults_incl_hangs_and_trickles_finish_within_the_deadline_and_lose_nothing(tmp_path):
    """30% of calls fail (500, 429, hang, trickle): every run ends within its deadline, resumes finish the work,
    and the items come out once each, as distinct samples."""
    from tests.fault_server import FaultServer

    n, item_timeout = 24, 4.0
    personas = tmp_path / "p.txt"
    personas.write_text("a baker\na sailor\na nurse\n")
    with FaultServer(vary=True, fault_rate=0.3, seed=7, hang_s=60, trickle_s=0.2) as server:
        lm = dspy.LM("openai/fault-" + os.urandom(4).hex(), api_base=server.url, api_key="sk-x", num_retries=1)
        lm = lm.copy(timeout=1.0)
        cfg = SynthConfig(n=n, lm=lm.model, personas=str(personas), workers=8, item_timeout=item_timeout, retries=1)
        runs, walls = 0, []
        totals = {"pending": n}
        while totals["pending"] and runs < 8:
            t0 = time.perf_counter()
            totals = run_synth(cfg, tmp_path / "run", resume=runs > 0, lm=lm)
            walls.append(time.perf_counter() - t0)
            runs += 1
        injected = dict(server.injected)
    records = _all_records(tmp_path / "run")
    keys = [r["key"] for r in records]
    lost, duplicated = n - len(set(keys)), len(keys) - len(set(keys))
    _log(
        test="faults",
        items=n,
        calls=server.calls,
        injected=injected,
        runs=runs,
        max_wall_s=round(max(walls), 1),
        lost=lost,
        duplicated=duplicated,
        distinct=len({r["id"] for r in records}),
    )
    assert injected.get("hang") and injected.get("trickle") and injected.get("500") and injected.get("429")
    assert totals["pending"] == 0 and lost == 0 and duplicated == 0
    assert len({r["id"] for r in records}) == n
    # One pass over 24 items on 8 threads: at most 3 rounds of items, each bounded by the item deadline.
    assert max(walls) < 3 * item_timeout * 2 + 10


def test_two_processes_on_one_out_one_is_refused_and_nothing_is_duplicated(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "REFINE_FAKE_LATENCY": "0.3"}
    cmd = [
        sys.executable,
        "-c",
        "from refine.cli import main; main()",
        "synth",
        "-q",
        "--n",
        "12",
        "--lm",
        FAKE,
        "--out",
        str(run),
        "--workers",
        "2",
    ]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "manifest.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    keys = _keys(run)
    _log(
        test="two_processes",
        trials=1,
        refused=int("in use by another process" in second.stderr),
        lost=12 - len(set(keys)),
        duplicated=len(keys) - len(set(keys)),
    )
    assert first.returncode == 0
    assert second.returncode != 0 and "in use by another process" in second.stderr
    assert "Traceback" not in second.stderr
    assert len(keys) == len(set(keys)) == 12


_ANY_TEXT = st.text(max_size=60)  # surrogates and NULs included


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.dictionaries(_ANY_TEXT, st.one_of(_ANY_TEXT, st.integers(), st.none()), max_size=4), max_size=5))
def test_fuzz_store_writes_never_raise_and_keep_every_record(tmp_path_factory, rows):
    from refine.store import RunStore

    run = tmp_path_factory.mktemp("fuzz") / "run"
    with RunStore(run, config={"note": "".join(k for r in rows for k in r)}) as store:
        for i, row in enumerate(rows):
            assert store.append("episodes", {k: v for k, v in row.items() if k != "key"}, f"k{i}")
    with RunStore(run, resume=True) as store:
        assert [r["key"] for r in store.records("episodes")] == [f"k{i}" for i in range(len(rows))]


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _ANY_TEXT, st.sampled_from(["os:system", "self_refine"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_ANY_TEXT, inner, max_size=3)),
    max_leaves=12,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    _JSON,
    st.sampled_from(["os:system", "subprocess:call", "self_refine", "builtins:exec", "refine.store:RunStore", None]),
    st.dictionaries(st.sampled_from(["stop_rule", "critic", "command", "max_rounds", "env"]), _JSON, max_size=3),
)
def test_fuzz_saved_program_loader_runs_nothing_it_is_not_allowed_to(tmp_path_factory, junk, program, options):
    """Random and hostile report.json files: loading is a refusal (ConfigError) or a built-in program, never a call."""
    import subprocess as sp

    from refine.errors import ConfigError
    from refine.optimizers import load_optimized
    from refine.programs.self_refine import build_graph

    d = tmp_path_factory.mktemp("saved")
    build_graph().compile().save(str(d / "program.json"))
    calls: list[str] = []

    def record(*args, **kwargs):
        calls.append(repr(args))

    real = os.system, sp.Popen
    os.system = sp.Popen = record
    try:
        for report in (junk, {"config": {"program": program, "program_options": options}}):
            (d / "report.json").write_text(json.dumps(report))
            try:
                load_optimized(d)
            except ConfigError:
                pass
    finally:
        os.system, sp.Popen = real
    assert calls == []


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_fuzz_persona_loader_gives_personas_or_one_config_error(tmp_path_factory, data, suffix):
    from refine.errors import ConfigError
    from refine.personas import load_personas

    p = tmp_path_factory.mktemp("personas") / f"p{suffix}"
    p.write_bytes(data)
    try:
        personas = load_personas(p)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert personas and all(isinstance(x, str) and x for x in personas)
