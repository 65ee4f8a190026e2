"""refine.report: PNG plots and a self-contained HTML page whose tables and trajectory viewer render in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from refine.errors import RunStoreError
from refine.eval import EvalConfig, evaluate
from refine.report import build_report, load_run
from tests.test_eval import scripted_agent, toy_factory

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "a", root / "b"
    evaluate(
        scripted_agent(),
        EvalConfig(envs=["toy", "maze"], episodes=2, perturb=True, held_in=["toy"], model="student"),
        a,
        env_factory=toy_factory,
    )
    evaluate(
        scripted_agent(), EvalConfig(envs=["toy"], episodes=1, max_steps=3, model="base"), b, env_factory=toy_factory
    )
    return a, b


def test_files_and_self_contained_html(runs, tmp_path):
    files = build_report(runs, tmp_path / "rep")
    assert set(files) == {"success_progress", "steps_hist", "robustness", "html"}
    for name in ("success_progress", "steps_hist", "robustness"):
        assert files[name].read_bytes().startswith(PNG)
    page = files["html"].read_text()
    assert page.count("data:image/png;base64,") == 3
    # Nothing is fetched from elsewhere: no external scripts, styles or images.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert '<table id="summary-table">' in page and '<table id="groups-table">' in page
    assert "student" in page and "base" in page and "held-in" in page and "held-out" in page


def test_script_end_tag_in_observations_is_escaped(tmp_path):
    from refine.report import RunData, render_html

    ep = {
        "env": "toy",
        "steps": 1,
        "success": False,
        "progress": 0.0,
        "trajectory": [{"t": 0, "observation": "</script><b>x</b>", "action": "look"}],
    }
    summary = {"envs": {}, "overall": {}}
    page = render_html([RunData(tmp_path, "r", summary, [ep])], {})
    assert page.count("</script>") == 2  # only the two real script elements end


def test_load_run_errors(tmp_path):
    with pytest.raises(RunStoreError, match="is not a run directory"):
        load_run(tmp_path)
    with pytest.raises(RunStoreError, match="No run directories given"):
        build_report([], tmp_path / "x")


def test_labels_from_manifest(runs):
    assert load_run(runs[0]).label == "student" and load_run(runs[1]).label == "base"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(runs, tmp_path):
    files = build_report(runs, tmp_path / "rep")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", files["html"].as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Tables: one row per (run, env, variant) -> a: toy+maze x base+perturbed, b: toy base.
    body = dom.split('<table id="summary-table">', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr>") == 1 + 5
    # The viewer rendered the first episode (by JavaScript: these elements are not in the HTML file itself).
    assert "<option" not in files["html"].read_text()
    assert dom.count("<option") == 9  # 8 episodes of run a + 1 of run b
    steps = re.findall(r'<div class="step[^"]*">', dom)
    assert len(steps) == 6  # the first episode (maze, original actions, #0) is solved in 6 steps
    assert 'class="step invalid"' in dom and 'class="step repeated"' in dom
    assert "Action: take key" in dom and "Thought: step 0" in dom and "Observation: You are in a small room" in dom
