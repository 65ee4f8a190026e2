"""`refine distill`: mask preview, a short training run with a tiny base, and one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("trl")

from refine.cli.app import app
from refine.distill.tiny import save_tiny_model
from refine.errors import ConfigError

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


@pytest.fixture()
def data(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "messages": MSGS}) + "\n" for i in range(6)))
    return p


def test_show_masks_highlights_trained_tokens(base, data):
    res = CliRunner().invoke(
        app, ["distill", str(data), "--base", str(base), "--show-masks", "1"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "r0:" in res.output and "trained" in res.output
    assert "r1:" not in res.output  # only N examples
    assert "Action: open door<|im_end|>" in res.output


def test_show_masks_no_refine_drops_error_turn(base, data):
    res = CliRunner().invoke(
        app, ["distill", str(data), "--base", str(base), "--show-masks", "1", "--ablation", "no-refine"]
    )
    assert res.exit_code == 0, res.output
    assert "kick door" not in res.output and "open door" in res.output


def test_train_writes_student(base, data, tmp_path):
    out = tmp_path / "student"
    res = CliRunner().invoke(
        app,
        [
            "distill",
            str(data),
            "--base",
            str(base),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "student" in res.output and "local/" in res.output
    assert (out / "config.json").is_file() and (out / "loss_curve.png").is_file()
    meta = json.loads((out / "refine_distill.json").read_text())
    assert meta["config"]["max_steps"] == 3 and meta["stats"]["examples"] == 6


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--ablation", "none", "--out", "x"], "--ablation 'none' is not one of masked, trained, no-refine"),
        (["--padding-free", "maybe", "--out", "x"], "--padding-free 'maybe'"),
        ([], "--out is required"),
        (["--out", "x", "--merge"], "--merge only applies to --lora"),
    ],
)
def test_user_errors(data, args, match):
    res = CliRunner().invoke(app, ["distill", str(data), *args])
    assert isinstance(res.exception, ConfigError)
    assert match in str(res.exception)


def test_missing_data_is_one_red_line(tmp_path):
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from refine.cli import main; main()",
            "distill",
            str(tmp_path / "nope.jsonl"),
            "--show-masks",
            "1",
            "--base",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: training data {tmp_path / 'nope.jsonl'} does not exist; pass a run directory or an exported dataset"
    ]
