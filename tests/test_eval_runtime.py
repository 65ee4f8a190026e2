"""`refine eval` at run time: Ctrl-C/SIGTERM stop it cleanly and --resume completes it, a per-episode deadline
catches hanging and trickling servers, episodes whose LM failed stay pending, runs that failed end `failed`,
near-miss names get "did you mean", and the progress bar counts steps and tokens."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dspy
import pytest

from refine.envs.base import ToyEnv
from refine.eval import EvalConfig, evaluate
from refine.programs.agent import AgentAction, ChatAgent, ProgramAgent
from refine.testing import ScriptedLM
from tests.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ["take lamp", "look", "look", "take key", "open door", "go door"]


def toy_factory(name, perturbed):
    return ToyEnv()


def _reply(fields, inputs, messages):
    n = sum(1 for m in messages if m["role"] == "assistant")
    return f"Thought: step {n}\nAction: {SCRIPT[min(n, len(SCRIPT) - 1)]}"


def slow_agent(lm=None):
    """`--agent tests.test_eval_runtime:slow_agent`: the toy solution, 0.3 s per turn (something to interrupt)."""

    def respond(fields, inputs, messages):
        time.sleep(0.3)
        return _reply(fields, inputs, messages)

    return ChatAgent(ScriptedLM(respond), max_turns=None)


def dead_lm_agent(lm=None):
    """`--agent tests.test_eval_runtime:dead_lm_agent`: every LM call fails (the server is down)."""

    def respond(fields, inputs, messages):
        raise ConnectionError("connection refused by 127.0.0.1:9")

    return ChatAgent(ScriptedLM(respond), max_turns=None)


def _refine(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "250", **env}
    return subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "200", **env}
    return subprocess.Popen(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the run ended before it could be interrupted (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run did not reach the point to interrupt in time")


def _one_error_line(out: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_eval_cleanly_and_resume_completes_it(tmp_path, sig, code):
    run = tmp_path / "run"
    args = ["eval", "--agent", "tests.test_eval_runtime:slow_agent", "--envs", "toy", "--episodes", "20"]
    args += ["--workers", "2", "--out", str(run), "-q"]
    proc = _start(args, tmp_path)
    _wait_for(lambda: len(_lines(run / "episodes.jsonl")) >= 1, 120, proc)
    proc.send_signal(sig)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 5  # the queued episodes were not played
    assert "Traceback" not in err and "terminate called" not in err
    assert err.strip().splitlines()[-1].startswith("Error: interrupted;"), err
    assert _manifest(run)["status"] == "interrupted"
    done = _lines(run / "episodes.jsonl")  # every line whole: json.loads would fail on a torn one
    assert 1 <= len(done) < 12
    assert all(r["steps"] == 6 and r["success"] for r in done)  # no abandoned half-episode was written
    assert not _lines(run / "errors.jsonl")  # abandoned episodes are not failures

    resumed = _refine(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    records = _lines(run / "episodes.jsonl")
    assert len(records) == 20 and len({(r["index"], r["variant"]) for r in records}) == 20  # none lost or doubled
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["episodes_played"] == 20 - len(done) and summary["overall"]["base"]["success_rate"] == 1.0
    assert _manifest(run)["status"] == "finished"


def test_interrupt_in_process_abandons_running_episodes_and_marks_the_manifest(tmp_path):
    from refine import interrupt

    started = threading.Event()

    class Session:
        def act(self, observation):
            started.set()
            time.sleep(0.05)
            return AgentAction("", "look", "Action: look")

    class Agent:
        model = "stub"

        def start(self, task, environment, actions):
            return Session()

    def ctrl_c() -> None:
        started.wait(10)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the main thread from its wait

    threading.Thread(target=ctrl_c, daemon=True).start()
    cfg = EvalConfig(envs=["toy"], episodes=6, workers=2, max_steps=1000)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), interrupt.handle_signals():
        evaluate(Agent(), cfg, tmp_path / "run", env_factory=toy_factory)
    assert time.monotonic() - t0 < 10  # 6 episodes of 1000 steps would take minutes
    assert _manifest(tmp_path / "run")["status"] == "interrupted"
    assert not _lines(tmp_path / "run" / "episodes.jsonl")  # the running ones were abandoned, not written
    assert not interrupt.requested()  # lowered again, so later LM calls in this process run normally


@pytest.mark.slow
def test_sigint_during_an_embedded_eval_exits_130_without_a_native_abort_and_resumes(tmp_path):
    # Sampling (each episode its own rollout_id): the toy room is deterministic, so at temperature 0 every episode
    # after the first wave is a cache hit of a few ms, and no signal sent after the first record finds work to stop.
    run = tmp_path / "run"
    args = ["eval", "--agent", "embedded", "--envs", "toy", "--episodes", "4", "--workers", "2", "--max-steps", "4"]
    args += ["--max-tokens", "24", "--temperature", "0.8", "--seed", str(int(time.time()) % 100_000)]
    args += ["--out", str(run), "-q"]
    env = {"DSPY_CACHEDIR": str(tmp_path / "dspy_cache")}
    proc = _start(args, tmp_path, **env)
    _wait_for(lambda: len(_lines(run / "episodes.jsonl")) >= 1, 300, proc)  # model loaded, episodes in play
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    assert "terminate called" not in err, err[-2000:]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - sent < 60
    assert _manifest(run)["status"] == "interrupted"
    done = len(_lines(run / "episodes.jsonl"))
    assert 1 <= done < 4

    resumed = _refine(*args, "--resume", cwd=tmp_path, **env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len({r["index"] for r in _lines(run / "episodes.jsonl")}) == 4 == len(_lines(run / "episodes.jsonl"))
    assert _manifest(run)["status"] == "finished"


def _counting_lm(**kw):
    return ScriptedLM(lambda f, i, m: "Thought: look around\nAction: look", model=f"fake/{uuid.uuid4().hex[:8]}", **kw)


@pytest.mark.parametrize(("temperature", "calls"), [(0.7, 6), (0.0, 3)])
def test_sampling_episodes_of_a_deterministic_env_get_their_own_answers_not_one_cached(tmp_path, temperature, calls):
    # Two episodes of the toy room see the same observations: a sampling agent must draw for each (its episode seed is
    # the rollout_id), while a greedy one may reuse the cached answer. Regression: at any temperature the second
    # episode replayed the first from DSPy's cache (2 ms, identical steps), so sampled evals measured one episode.
    lm = _counting_lm(cache=True, temperature=temperature)
    cfg = EvalConfig(envs=["toy"], episodes=2, workers=1, max_steps=3)
    res = evaluate(ChatAgent(lm, max_turns=None), cfg, tmp_path / "run", env_factory=toy_factory)
    assert len(res.records) == 2 and lm.calls == calls
    if temperature:
        again = _counting_lm(cache=True, temperature=temperature)
        again.model = lm.model  # the same cache entries: a replayed episode gets its own answers back
        evaluate(ChatAgent(again, max_turns=None), cfg, tmp_path / "again", env_factory=toy_factory)
        assert again.calls == 0


@pytest.mark.parametrize(("temperature", "calls"), [(0.7, 6), (0.0, 3)])
def test_a_sampling_program_agent_draws_per_episode_too(tmp_path, temperature, calls):
    # As above, for the DSPy-program agent (its predictor's calls carry the episode seed as rollout_id).
    lm = ScriptedLM(
        lambda f, i, m: {"thought": "look around", "action": "look"},
        model=f"fake/{uuid.uuid4().hex[:8]}",
        cache=True,
        temperature=temperature,
    )
    cfg = EvalConfig(envs=["toy"], episodes=2, workers=1, max_steps=3)
    res = evaluate(ProgramAgent(lm), cfg, tmp_path / "run", env_factory=toy_factory)
    assert len(res.records) == 2 and lm.calls == calls
    assert all(step["action"] == "look" for r in res.records for step in r["trajectory"])


# --------------------------------------------------------------------------------------- deadlines and servers
def _server_agent(server: FaultServer, **kw) -> ChatAgent:
    kw.setdefault("timeout", 30)
    kw.setdefault("num_retries", 0)
    # A fresh model name per test: DSPy's cache ignores api_base, and answers must not come from another test.
    lm = dspy.LM(f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key="sk-local-test", **kw)
    return ChatAgent(lm, max_turns=None)


def test_episode_deadline_catches_a_trickling_server_and_resume_plays_it_again(tmp_path):
    run = tmp_path / "run"
    cfg = EvalConfig(envs=["toy"], episodes=2, workers=2, max_steps=3, episode_timeout=2.0)
    with FaultServer(fault_rate=1.0, faults=("trickle",), trickle_s=0.2) as server:
        agent = _server_agent(server)  # a 30 s read timeout never trips: a byte comes every 0.2 s
        t0 = time.monotonic()
        res = evaluate(agent, cfg, run, env_factory=toy_factory)
        wall = time.monotonic() - t0
    assert wall < 8, wall
    assert res.records == [] and res.summary["run"]["pending"] == 2
    errors = _lines(run / "errors.jsonl")
    assert len(errors) == 2 and all(e["error"].startswith("EpisodeTimeout: the episode ran past") for e in errors)
    manifest = _manifest(run)
    assert manifest["status"] == "failed"
    assert manifest["failure"].startswith("all 2 episodes failed: EpisodeTimeout: the episode ran past its deadline")
    assert not _lines(run / "episodes.jsonl")

    with FaultServer() as healthy:  # the server is fixed: the pending episodes are played, nothing else
        again = evaluate(_server_agent(healthy), cfg, run, resume=True, env_factory=toy_factory)
    assert again.summary["run"]["episodes_played"] == 2 and again.summary["run"]["pending"] == 0
    assert len(_lines(run / "episodes.jsonl")) == 2 and _manifest(run)["status"] == "finished"
    assert "failure" not in again.summary["run"]


def test_retried_rate_limits_and_server_errors_are_counted_in_the_summary_and_manifest(tmp_path):
    # Regression (#16 item 10): calls DSPy retried after a 429/500 and then got answered left no trace.
    cfg = EvalConfig(envs=["toy"], episodes=3, workers=3, max_steps=4)
    with FaultServer(fault_rate=0.4, faults=("429", "500"), seed=2, retry_after_500="0") as server:
        res = evaluate(_server_agent(server, num_retries=8), cfg, tmp_path / "run", env_factory=toy_factory)
        injected = server.injected["429"] + server.injected["500"]
    assert injected > 0 and res.summary["run"]["pending"] == 0 and len(res.records) == 3
    assert sum(r["retried_calls"] for r in res.records) == injected
    assert res.summary["run"]["retried_calls"] == injected
    assert _manifest(tmp_path / "run")["summary"]["retried_calls"] == injected


def test_hanging_server_fails_turns_and_the_episode_stays_pending(tmp_path):
    cfg = EvalConfig(envs=["toy"], episodes=2, workers=2, max_steps=10)
    with FaultServer(fault_rate=1.0, faults=("hang",), hang_s=30) as server:
        t0 = time.monotonic()
        res = evaluate(_server_agent(server, timeout=0.5), cfg, tmp_path / "run", env_factory=toy_factory)
        wall = time.monotonic() - t0
    assert wall < 15, wall  # 3 timed-out turns per episode, not 10 steps of 30 s
    assert res.summary["run"]["pending"] == 2 and res.records == []
    failure = res.summary["run"]["failure"]
    assert failure.startswith("all 2 episodes failed: the LM failed on 3 turns in a row:") and "Timeout" in failure


def test_cli_episode_deadline_fails_the_run_with_one_line(tmp_path):
    run = tmp_path / "run"
    with FaultServer(fault_rate=1.0, faults=("trickle",), trickle_s=0.2) as server:
        out = _refine(
            "eval", "--agent", f"openai/fake-{uuid.uuid4().hex[:8]}", "--api-base", server.url, "--envs", "toy",
            "--episodes", "2", "--max-steps", "3", "--episode-timeout", "2", "--out", str(run), "-q",
            cwd=tmp_path, OPENAI_API_KEY="sk-local-test", REFINE_NO_PREFLIGHT="1",
            DSPY_CACHEDIR=str(tmp_path / "dspy_cache"),
        )  # fmt: skip
    line = _one_error_line(out)
    assert line.startswith(
        "Error: The evaluation failed (all 2 episodes failed: EpisodeTimeout: the episode ran past its deadline of 2 s"
    ), line
    assert line.endswith("; the manifest says 'failed'. Fix the cause and rerun."), line
    assert _manifest(run)["status"] == "failed"


# --------------------------------------------------------------------------------------------- failed runs
def test_every_episode_failing_for_the_lm_ends_failed_with_exit_1(tmp_path):
    run = tmp_path / "run"
    out = _refine(
        "eval", "--agent", "tests.test_eval_runtime:dead_lm_agent", "--envs", "toy", "--episodes", "3",
        "--out", str(run), "-q", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (  # above it only the agent's own "LM call failed" log lines
        "Error: The evaluation failed (all 3 episodes failed: the LM failed on 3 turns in a row: LMUnexpectedError: "
        "[fake/scripted] connection refused by 127.0.0.1:9); the manifest says 'failed'. Fix the cause and rerun."
    )
    manifest = _manifest(run)
    assert manifest["status"] == "failed" and manifest["failure"].startswith("all 3 episodes failed")
    assert len(_lines(run / "errors.jsonl")) == 3 and not _lines(run / "episodes.jsonl")


class _SometimesDown:
    """Sessions number `down` of every 3 in a row get a failing LM (a rate limit); the rest solve the toy."""

    model = "stub"

    def __init__(self, down: set[int]) -> None:
        self.down = down
        self._n = itertools.count()

    def start(self, task, environment, actions):
        failing = next(self._n) % 3 in self.down
        steps = iter(["take key", "open door", "go door"])

        class Session:
            def act(self, observation):
                if failing:
                    return AgentAction("", None, "", error="lm error: RateLimitError: slow down")
                return AgentAction("", next(steps), "")

        return Session()


def test_more_than_half_failing_with_one_lm_error_ends_failed(tmp_path):
    cfg = EvalConfig(envs=["toy"], episodes=3, workers=1)
    res = evaluate(_SometimesDown({1, 2}), cfg, tmp_path / "run", env_factory=toy_factory)
    assert res.summary["run"]["failure"] == (
        "2 of 3 episodes failed with the same LM error: the LM failed on 3 turns in a row: RateLimitError: slow down"
    )
    assert _manifest(tmp_path / "run")["status"] == "failed"


def test_a_minority_of_lm_failures_is_pending_not_failed(tmp_path):
    cfg = EvalConfig(envs=["toy"], episodes=3, workers=1)
    res = evaluate(_SometimesDown({2}), cfg, tmp_path / "run", env_factory=toy_factory)
    run = res.summary["run"]
    assert "failure" not in run and run["pending"] == 1 and len(res.records) == 2
    assert res.summary["overall"]["base"]["episodes"] == 2  # the pending episode is not counted as a failure
    assert any("1 episode(s) have no result" in w for w in res.summary["warnings"])
    assert _manifest(tmp_path / "run")["status"] == "incomplete"


# ------------------------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--envs", "babyai,sciencewrld"],
            "Error: Unknown environment 'sciencewrld' in the refine suite (--envs); did you mean 'scienceworld'? "
            "Available: babyai, scienceworld, pddl, textworld, toy.",
        ),
        (
            ["--suite", "agentbord"],
            "Error: Unknown suite 'agentbord' (--suite); did you mean 'agentboard'? Use one of: refine, agentboard.",
        ),
        (
            ["--agent", "expret"],
            "Error: Unknown agent 'expret' (--agent); did you mean 'expert'? Use one of: expert, random, chat, "
            "program, embedded.",
        ),
        (
            ["--suite", "agentboard", "--envs", "pdl"],
            "Error: Unknown environment 'pdl' in the agentboard suite (--envs); did you mean 'pddl'? "
            "Available: babyai, scienceworld, pddl, toy.",
        ),
    ],
)
def test_near_miss_names_fail_at_once_with_did_you_mean(tmp_path, args, message):
    t0 = time.monotonic()
    out = _refine("eval", *args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert _one_error_line(out) == message
    assert time.monotonic() - t0 < 30 and not (tmp_path / "run").exists()  # nothing was played or written


# ------------------------------------------------------------------------------------------------- progress
def test_on_step_reports_every_step_with_its_tokens():
    seen: list[dict] = []
    lock = threading.Lock()

    def on_step(info):
        with lock:
            seen.append(info)

    agent = ChatAgent(ScriptedLM(_reply), max_turns=None)
    res = evaluate(agent, EvalConfig(envs=["toy"], episodes=2, workers=2), env_factory=toy_factory, on_step=on_step)
    base = res.summary["overall"]["base"]
    assert len(seen) == base["steps"] == 12
    assert {s["key"] for s in seen} == {"toy:base:0", "toy:base:1"}
    assert sum(s["prompt_tokens"] + s["completion_tokens"] for s in seen) == (
        base["prompt_tokens"] + base["completion_tokens"]
    )


def test_progress_bar_shows_episodes_steps_tokens_and_eta(tmp_path):
    out = _refine(
        "eval", "--agent", "tests.test_eval_runtime:slow_agent", "--envs", "toy", "--episodes", "2", "--workers",
        "2", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    bar = next(ln for ln in out.stderr.splitlines() if ln.startswith("eval"))
    assert "2/2 episodes" in bar and "2 solved" in bar and "12 steps" in bar and "ETA" in bar, bar
    tokens = int(bar.split(" steps")[1].split("tokens")[0].replace(",", "").strip())
    assert tokens > 0
