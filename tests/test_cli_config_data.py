"""`refine distill`'s DATA may come from `--config` (TOML or YAML); DATA on the command line wins (issue #17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("trl")

from refine.cli.app import app
from refine.distill.tiny_bases import save_tiny_model
from refine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MSGS = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Task: open the door."},
    {"role": "assistant", "content": "Thought: kick it.\nAction: kick door", "loss": False},
    {"role": "user", "content": "Observation: Invalid action."},
    {"role": "assistant", "content": "Thought: use the handle.\nAction: open door"},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"))


def _data(path: Path, prefix: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "messages": MSGS}) + "\n" for i in range(3)))
    return path


def _config(tmp_path: Path, suffix: str, data: Path, base: Path) -> Path:
    if suffix == ".toml":
        text = f'[distill]\ndata = "{data}"\nbase = "{base}"\nshow-masks = 1\n'
    else:
        text = f"distill:\n  data: {data}\n  base: {base}\n  show_masks: 1\nsynth:\n  n: 2\n"
    cfg = tmp_path / f"cfg{suffix}"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_distill_takes_data_from_the_config_file(tmp_path, base, suffix):
    cfg = _config(tmp_path, suffix, _data(tmp_path / "from_config.jsonl", "cfg"), base)
    res = CliRunner().invoke(app, ["distill", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "cfg0:" in res.output and "cli0:" not in res.output


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_data_on_the_command_line_wins_over_the_config_file(tmp_path, base, suffix):
    cfg = _config(tmp_path, suffix, tmp_path / "not-there.jsonl", base)
    cli = _data(tmp_path / "from_cli.jsonl", "cli")
    res = CliRunner().invoke(app, ["distill", str(cli), "--config", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "cli0:" in res.output


def test_data_from_the_config_file_is_checked_like_data_on_the_command_line(tmp_path, base):
    cfg = _config(tmp_path, ".toml", tmp_path / "not-there.jsonl", base)
    res = CliRunner().invoke(app, ["distill", "--config", str(cfg)])
    assert res.exit_code != 0
    assert "training data" in str(res.exception) and "not-there.jsonl does not exist" in str(res.exception)


def test_no_data_anywhere_is_one_line_naming_both_places(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "NO_COLOR": "1", "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", "distill", "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: Pass DATA (a run directory, an export or hf:owner/name)")
    assert "[distill] table of --config" in lines[0]


def test_missing_data_is_a_config_error_in_process():
    res = CliRunner().invoke(app, ["distill", "--out", "x"])
    assert isinstance(res.exception, ConfigError)
    assert "Pass DATA" in str(res.exception)
