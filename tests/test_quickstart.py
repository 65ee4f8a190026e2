"""`refine quickstart` end to end at the tiny preset: real embedded model, real environments, real training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refine.errors import ConfigError
from refine.quickstart import PRESETS, QuickstartConfig, run_quickstart


def test_preset_sizes_and_overrides():
    cfg = QuickstartConfig(preset="tiny", distill_steps=7)
    assert cfg.size("distill_steps") == 7
    assert cfg.size("eval_episodes") == PRESETS["tiny"]["eval_episodes"]


def test_unknown_environment_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown environments \['atari'\]"):
        run_quickstart(QuickstartConfig(out=tmp_path, train_envs=["atari"]))


@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("minigrid")
    out = tmp_path / "qs"
    cmd = [
        str(Path(sys.executable).parent / "refine"),
        "quickstart",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--heldout-envs",
        "textworld",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Distillation reports a line per step, not transformers' raw log dicts (#17 item 7).
    assert "{'loss'" not in proc.stdout + proc.stderr and "'train_runtime'" not in proc.stdout + proc.stderr
    assert f"distill: step {PRESETS['tiny']['distill_steps']}/{PRESETS['tiny']['distill_steps']}  loss " in proc.stdout
    summary = json.loads((out / "quickstart.json").read_text())
    # Every stage ran and left its run directory; the env expert produced verified training data.
    assert set(summary["seconds"]) >= {"synth", "synth_env", "distill", "eval_base", "report"}
    assert summary["synth_env"]["accepted"] >= 1
    assert summary["distill"]["steps"] == PRESETS["tiny"]["distill_steps"]
    assert summary["distill"]["last_loss"] < summary["distill"]["first_loss"]
    assert (out / "student" / "config.json").exists()
    for label in ("base", "student"):
        envs = summary[f"eval_{label}"]["envs"]
        assert set(envs) == {"babyai", "pddl", "textworld"}
        assert envs["babyai"]["held_in"] and not envs["textworld"]["held_in"]
    html = (out / "report" / "report.html").read_text()
    assert "textworld" in html and "babyai" in html
    # Resuming a finished quickstart redoes nothing but the report.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already done") >= 5


@pytest.mark.parametrize("env", ["babyai", "pddl", "textworld", "scienceworld"])
def test_on_policy_training_envs_draw_from_the_train_split(env):
    """Training episodes must never come from the test seeds that evaluation uses (every env, BabyAI included)."""
    from refine.synthesis.item_work import _env_factory

    factory = _env_factory(env, {})
    assert factory.keywords["split"] == "train" and factory.args == (env,)


def _episode(env, i, success, steps, invalid, no_action):
    trajectory = [{"action": None, "reason": "no 'Action:' line in the reply"}] * no_action
    trajectory += [{"action": "look"}] * (steps - no_action)
    return {"env": env, "index": i, "seed": i, "task": None, "success": success, "progress": float(success),
            "steps": steps, "invalid_steps": invalid, "trajectory": trajectory}  # fmt: skip


def test_effects_pair_episodes_and_name_real_effects_and_silent_envs():
    from refine.quickstart import effects, render_effects

    base = [_episode(e, i, False, 8, 8, 8) for e in ("babyai", "textworld") for i in range(6)]
    student = [_episode(e, i, i < 1, 8, 2 + i % 3, i % 2) for e in ("babyai", "textworld") for i in range(6)]
    result = effects(base, student, ["babyai"])
    held_out = result["groups"]["held_out"]
    assert held_out["n"] == 6 and held_out["paired"] and held_out["envs"] == ["textworld"]
    fmt = held_out["format_fail"]
    assert fmt["base"] == 1.0 and fmt["student"] == pytest.approx(3 / 48)
    assert fmt["real"] and fmt["better"] and fmt["delta_ci"][1] < 0
    assert not held_out["success"]["real"]  # 1 of 6 solved: its interval includes 0
    text = render_effects(result)
    assert "real effect (better): held_out format_fail 100% -> 6%" in text
    assert "held_out    6 success" in text
    assert result["notes"] == []  # one episode of each env was solved

    # Two episodes that both improve: a zero-width bootstrap interval, but too few pairs to call it real.
    few = effects(base[:2], student[:2], ["babyai"])["groups"]["held_in"]["format_fail"]
    assert few["delta_ci"][1] < 0 and not few["real"]

    nothing = effects(base, base, ["babyai"])
    assert "no effect at this size" in render_effects(nothing)
    assert any(n.startswith("babyai: neither model solved an episode") for n in nothing["notes"])


def test_effects_skip_groups_without_common_episodes():
    from refine.quickstart import effects

    base = [_episode("pddl", i, False, 4, 4, 4) for i in range(3)]
    student = [_episode("pddl", i + 10, False, 4, 1, 0) for i in range(3)]
    assert effects(base, student, ["pddl"])["groups"] == {}


def test_reading_a_finished_eval_leaves_it_finished(tmp_path):
    """Regression: episode_records reopened the eval run with resume=True, which marked it 'running' again, so every
    resumed quickstart replayed both evaluations (test_quickstart_tiny_end_to_end saw 3 'already done', not 5)."""
    from refine.quickstart import episode_records
    from refine.store import RunStore

    run = tmp_path / "eval_base"
    with RunStore(run, {"envs": ["pddl"]}) as store:
        store.append("episodes", {"env": "pddl", "variant": "base", "success": 1.0}, key="pddl:0")
        store.append("episodes", {"env": "pddl", "variant": "reworded", "success": 0.0}, key="pddl:0:r")
        store.finish()
    assert [r["key"] for r in episode_records(run)] == ["pddl:0"]
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"


def test_timeouts_reach_every_stage_config():
    from refine.quickstart import env_synth_config, eval_config, oneshot_synth_config

    cfg = QuickstartConfig(preset="tiny", teacher="openai/gpt-4o-mini", timeout=2.5, item_timeout=7.0)
    for sc in (oneshot_synth_config(cfg), env_synth_config(cfg)):
        assert (sc.timeout, sc.item_timeout) == (2.5, 7.0)
    assert eval_config(cfg, "embedded").episode_timeout == 7.0
    # Defaults: synth's (60 s per call; the item deadline derived from it for remote LMs), eval's 20 s x steps for a
    # remote model and no deadline in-process.
    default = QuickstartConfig(preset="tiny")
    assert (oneshot_synth_config(default).timeout, oneshot_synth_config(default).item_timeout) == (60.0, None)
    steps = PRESETS["tiny"]["eval_max_steps"]
    assert eval_config(default, "openai/gpt-4o-mini").episode_timeout == 20.0 * steps
    assert eval_config(default, "embedded").episode_timeout is None


def test_a_remote_eval_model_gets_the_call_timeout(tmp_path, monkeypatch):
    import refine.eval
    from refine.quickstart import evaluate_model

    seen = {}

    def fake_evaluate(agent, config, out, resume=False):
        seen.update(agent=agent, config=config)
        return type("Result", (), {"summary": {}})()

    monkeypatch.setattr(refine.eval, "evaluate", fake_evaluate)
    cfg = QuickstartConfig(preset="tiny", timeout=3.0)
    evaluate_model(cfg, "openai/fake-model", tmp_path / "eval")
    assert seen["agent"].lm.kwargs["timeout"] == 3.0 and seen["agent"].lm.kwargs["max_tokens"] == 64
    assert seen["config"].episode_timeout == 20.0 * PRESETS["tiny"]["eval_max_steps"]


def test_cli_timeouts_come_from_flags_and_the_config_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import refine.preflight
    import refine.quickstart
    from refine.cli.app import app

    configs, probes = [], []
    monkeypatch.setattr(refine.quickstart, "run_quickstart", lambda cfg, progress=None: configs.append(cfg) or {})
    monkeypatch.setattr(refine.preflight, "check_lm", lambda spec, **kw: probes.append((spec, kw.get("timeout"))))
    runner = CliRunner()
    res = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "a"), "--timeout", "2.5", "--item-timeout", "9"])
    assert res.exit_code == 0, res.output
    assert (configs[-1].timeout, configs[-1].item_timeout) == (2.5, 9.0)
    assert probes == [("embedded", 2.5), ("embedded", 2.5)]  # the preflight call waits no longer than a run's call
    (tmp_path / "cfg.toml").write_text("[quickstart]\ntimeout = 4.0\nitem-timeout = 30\n")
    res = runner.invoke(app, ["quickstart", "--config", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (configs[-1].timeout, configs[-1].item_timeout) == (4.0, 30.0)
    res = runner.invoke(app, ["quickstart", "--config", str(tmp_path / "cfg.toml"), "--print-config"])
    assert "timeout = 4.0\nitem_timeout = 30.0\n" in res.output, res.output
    res = runner.invoke(app, ["quickstart", "--print-config"])
    assert "timeout = 60.0\n# item_timeout =  (unset)\n" in res.output, res.output
