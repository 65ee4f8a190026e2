"""`--config FILE` (TOML/YAML), `--set key=value` and `--print-config` drive every command with a typed config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = "py:tests.test_synth_support:make_lm"


def _refine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


TOML = f"""
[synth]
lm = "{FAKE}"
n = 3
workers = 2
max-attempts = 1
out = "runs/from_config"
quiet = true
"""

YAML = f"""
synth:
  lm: "{FAKE}"
  n: 3
  workers: 2
  max_attempts: 1
  out: runs/from_config
  quiet: true
eval:
  episodes: 2
"""


@pytest.mark.parametrize(("name", "text"), [("cfg.toml", TOML), ("cfg.yaml", YAML)])
def test_synth_runs_from_a_config_file_and_stores_the_resolved_config(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    out = _refine("synth", "--config", name, "--set", "seed=5", "--n", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "runs/from_config/manifest.json").read_text())
    config = manifest["config"]
    # file values, --set on top, and a flag on the command line over both
    assert (config["lm"], config["max_attempts"], config["workers"]) == (FAKE, 1, 2)
    assert config["seed"] == 5 and config["n"] == 2
    lines = (tmp_path / "runs/from_config/accepted.jsonl").read_text().splitlines() + (
        tmp_path / "runs/from_config/rejected.jsonl"
    ).read_text().splitlines()
    assert len([ln for ln in lines if ln.strip()]) == 2


def test_print_config_shows_the_defaults_as_toml(tmp_path):
    out = _refine("synth", "--print-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = tomllib.loads(out.stdout)["synth"]
    assert data["n"] == 4 and data["lm"] == "embedded" and data["max_attempts"] == 4
    (tmp_path / "cfg.toml").write_text(TOML)
    out = _refine("synth", "--config", "cfg.toml", "--print-config", cwd=tmp_path)
    assert tomllib.loads(out.stdout)["synth"]["n"] == 3


@pytest.mark.parametrize("command", ["synth", "optimize", "quickstart", "eval", "distill"])
def test_every_command_with_a_typed_config_prints_it(tmp_path, command):
    out = _refine(command, "--print-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert command in tomllib.loads(out.stdout)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[synth]\nnn = 3\n", r"cfg.toml: unknown key 'nn' for `refine synth`; did you mean 'n'\?"),
        ("[synth]\nn = 'three'\n", r"cfg.toml: n = 'three': Invalid value for '--n'.*valid integer"),
        ("[synth\nn = 3\n", r"--config cfg.toml: cannot parse it: "),
    ],
)
def test_bad_config_files_fail_with_one_line(tmp_path, text, message):
    import re

    (tmp_path / "cfg.toml").write_text(text)
    out = _refine("synth", "--config", "cfg.toml", "--out", "run", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()
