"""`refine synth` against real environments (the quickstart's on-policy data) and the synth bar's live progress."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from typer.testing import CliRunner

from refine.cli import app
from refine.errors import ConfigError
from refine.synth import SynthConfig, run_synth
from refine.testing import ScriptedLM
from tests.test_synth_support import teacher_respond

AGENT = "py:tests.test_synth_env:make_agent_lm"


def _dancer(fields: list[str], inputs: dict[str, Any], messages: Any) -> dict[str, Any]:
    # Always an action BabyAI does not have: every step is flagged, and the environment's expert supplies the fix.
    return {"thought": "I will dance.", "action": "dance"} if "action" in fields else dict.fromkeys(fields, "")


def make_agent_lm() -> Any:
    """A student that never acts right (`--lm py:tests.test_synth_env:make_agent_lm`)."""
    return ScriptedLM(_dancer, model="fake/student")


def _records(run, kind):
    path = run / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cli_synth_plays_babyai_with_the_env_expert_as_refiner(tmp_path):
    pytest.importorskip("minigrid")
    from refine.distill.training_rows import load_rows

    run = tmp_path / "run"
    args = ["synth", "--program", "interactive", "--env", "babyai", "--refiner", "env", "--lm", AGENT]
    res = CliRunner().invoke(app, [*args, "--n", "2", "--max-steps", "16", "-w", "2", "-q", "--out", str(run)])
    assert res.exit_code == 0, res.output
    accepted = _records(run, "accepted")
    # The on-policy records of the quickstart: episodes of the train split, keyed env-seed, fixed by the expert.
    assert sorted(r["key"] for r in accepted) == ["babyai-0", "babyai-1"]
    for rec in accepted:
        assert rec["env"] == "babyai" and rec["success"] is True and rec["lm_calls"] >= 2
        traj = rec["trajectory"]
        assert traj["verdict"]["ok"] and traj["provenance"]["models"]["teacher"] == "env-expert"
        assert traj["provenance"]["usage"]["fake/student"]["calls"] == rec["lm_calls"]
    assert load_rows(run)  # what the distill stage trains on
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["env"] == ["babyai"]
    assert manifest["config"]["refiner"] == "env" and "personas_sha256" not in manifest["config"]
    res = CliRunner().invoke(app, [*args, "--n", "2", "--max-steps", "16", "-q", "--out", str(run), "--resume"])
    assert res.exit_code == 0, res.output
    assert len(_records(run, "accepted")) == 2  # nothing redone, nothing duplicated


def test_env_settings_are_checked_before_any_work(tmp_path):
    def fails(*extra: str) -> BaseException:
        res = CliRunner().invoke(app, ["synth", "--lm", AGENT, "-q", "--out", str(tmp_path / "r"), *extra])
        assert res.exit_code != 0 and not (tmp_path / "r").exists()
        return res.exception

    assert "did you mean 'babyai'?" in str(fails("--program", "interactive", "--env", "babyia"))
    assert str(fails("--program", "interactive", "--env", "babyai", "--refiner", "expert")).startswith(
        "Unknown refiner 'expert' (--refiner); use one of: lm, env."
    )
    with pytest.raises(ConfigError, match="starts from a script or an environment, not a persona: pass --env"):
        run_synth(SynthConfig(program="interactive", lm=AGENT), tmp_path / "r")
    with pytest.raises(ConfigError, match="are settings of environment runs; pass --env NAME"):
        run_synth(SynthConfig(refiner="env", lm=AGENT), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"env_options name \['pddl'\], which are not among"):
        run_synth(SynthConfig(program="interactive", env=["babyai"], env_options={"pddl": {}}), tmp_path / "r")


def test_the_quickstart_makes_its_on_policy_data_with_refine_synth(tmp_path, monkeypatch):
    import refine.synth
    from refine.quickstart import QuickstartConfig, synthesize_env

    seen: list[SynthConfig] = []
    monkeypatch.setattr(refine.synth, "run_synth", lambda config, out, resume: seen.append(config) or {"ok": 1})
    cfg = QuickstartConfig(preset="tiny", seed=1, student="embedded", train_envs=["babyai", "pddl"])
    assert synthesize_env(cfg, tmp_path / "synth_env") == {"ok": 1}
    (sc,) = seen
    assert (sc.program, sc.refiner, sc.env, sc.lm) == ("interactive", "env", ["babyai", "pddl"], "embedded")
    assert sc.env_options == {"pddl": {"tasks": ["blocks"]}} and sc.max_tokens == 96
    assert (sc.n, sc.seed, sc.max_steps) == (2, 2, 16)  # seed 1 plays train episodes 2, 3 of each env


def test_the_synth_bar_moves_within_an_item(tmp_path):
    """Items, accept rate, tokens and ETA update as each LM call ends, before the first item finishes."""
    from rich.progress import Progress

    from refine.cli.cmd_synth import _update_bar

    # A few slow calls per item, so the bar has moments between calls to show.
    lm = ScriptedLM(teacher_respond, model="fake/teacher", latency=0.05)
    finished = threading.Event()
    before: list[dict[str, Any]] = []
    with Progress(disable=True) as bar:
        task = bar.add_task("synth", total=1, accepted=0, rejected=0, failed=0, tokens=0, rate="-")

        def on_call(counts: dict[str, Any]) -> None:
            _update_bar(bar, task, counts)
            if not finished.is_set():
                t = bar.tasks[0]
                before.append({"completed": t.completed, "tokens": t.fields["tokens"], "eta": t.time_remaining})

        def on_item(outcome: Any, counts: dict[str, Any]) -> None:
            finished.set()
            _update_bar(bar, task, counts)

        totals = run_synth(
            SynthConfig(n=1, lm="py:tests.test_synth_support:make_lm", workers=1),
            tmp_path / "run",
            lm=lm,
            progress=on_item,
            on_call=on_call,
        )
        final = bar.tasks[0]
    assert totals["lm_calls"] >= 2 and len(before) >= 2
    assert before[0]["tokens"] > 0  # the first call's tokens show as soon as the engine reports them
    assert 0 < before[1]["completed"] < 1  # and its end moves the bar
    assert before[-1]["tokens"] > before[0]["tokens"] and before[-1]["completed"] >= before[0]["completed"]
    assert any(b["eta"] is not None for b in before)  # an ETA before any item finished
    assert final.completed == 1 and final.fields["rate"] in ("0%", "100%")
    assert final.fields["tokens"] == totals["tokens"]  # live tokens add up to the records' usage
