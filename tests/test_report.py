"""refine.eval.report: PNG plots and a self-contained HTML page; tables and trajectory viewer render in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from refine.errors import RunStoreError
from refine.eval import EvalConfig, evaluate
from refine.eval.report import build_report, load_run
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
    assert '<table id="delta-table">' in page and '<table id="settings-table">' in page
    assert "student" in page and "base" in page and "held-in" in page and "held-out" in page
    # "base" is the second run's model here; the action wording is never called that.
    table = page.split('<table id="summary-table">', 1)[1].split("</table>", 1)[0]
    wording = [re.findall(r"<td>(.*?)</td>", row)[3] for row in table.split("<tr")[2:]]
    assert set(wording) == {"original", "reworded"}
    assert "n=2 episodes &lt; 20" in page or "n=2 episodes < 20" in page


def test_summary_rows_carry_n_and_intervals(runs, tmp_path):
    page = build_report(runs, tmp_path / "rep")["html"].read_text()
    table = page.split('<table id="summary-table">', 1)[1].split("</table>", 1)[0]
    # student/toy/original: 2 of 2 solved -> 100.0 with Wilson [34-100]
    assert "<td>2</td><td>100.0 <small>[34–100]</small></td>" in table


def test_delta_table_is_paired_on_the_same_episodes(runs, tmp_path):
    from refine.eval.report import _delta_table

    a, b = load_run(runs[0]), load_run(runs[1])
    table = _delta_table([b, a])  # a minus b: b played toy #0 with 3 steps (fails), a solved toy #0 and #1
    assert "unpaired" in table  # b has one toy episode, a has two: not the same episodes
    assert "<td>1 / 2</td>" in table and "+100.0" in table
    same = _delta_table([a, a])
    assert "unpaired" not in same and "+0.0 <small>[+0, +0]</small>" in same


def test_partial_run_is_marked(runs, tmp_path):
    import shutil as sh

    from refine.store import RunStore

    killed = tmp_path / "killed"
    sh.copytree(runs[0], killed)
    RunStore(killed, resume=True).close()  # a resumed eval killed before it finished: status stays "running"
    run = load_run(killed)
    assert run.partial and run.expected == 8 and not load_run(runs[0]).partial
    page = build_report([killed], tmp_path / "rep")["html"].read_text()
    assert "PARTIAL run, 8 of 8 episodes played" in page and 'class="partial"' in page
    # Fewer episodes than the config asks for is partial even with a finished manifest.
    lines = (killed / "episodes.jsonl").read_text().splitlines(keepends=True)
    (killed / "episodes.jsonl").write_text("".join(lines[:5]))
    RunStore(killed, resume=True).finish()
    assert load_run(killed).partial and "PARTIAL run, 5 of 8 episodes" in render_page([killed], tmp_path / "r2")


def render_page(dirs, out):
    return build_report(dirs, out)["html"].read_text()


def test_every_plot_has_data(runs):
    import matplotlib.pyplot as plt

    from refine.eval.report import plot_figures

    runs_ = [load_run(r) for r in runs]
    figs = plot_figures(runs_)
    assert set(figs) == {"success_progress", "steps_hist", "robustness"}
    for name, fig in figs.items():
        axes = [ax for ax in fig.axes if ax.axison]
        assert axes, name
        for ax in axes:
            artists = [*ax.lines, *ax.collections, *[p for p in ax.patches if p.get_height() > 0]]
            assert artists, f"{name}: an axes without data ({ax.get_title()})"
        plt.close(fig)
    # Colours: one per run, the same in every plot and in the legend.
    hist = plot_figures(runs_)["steps_hist"]
    legend = {
        t.get_text(): h.get_facecolor()
        for t, h in zip(hist.legends[0].texts, hist.legends[0].legend_handles, strict=True)
    }
    toy_ax = next(ax for ax in hist.axes if ax.get_title() == "toy")
    bar_colors = {tuple(p.get_facecolor()) for p in toy_ax.patches if p.get_height() > 0}
    assert {tuple(c) for c in legend.values()} >= bar_colors and len(bar_colors) == 2


def test_two_models_by_four_envs_plots(tmp_path):
    import matplotlib.pyplot as plt

    from refine.eval.report import RunData, plot_figures

    envs = ["babyai", "pddl", "scienceworld", "textworld"]
    recs = [
        {"env": e, "variant": "base", "index": i, "seed": i, "success": i == 0, "progress": 0.25 * i, "steps": 5 + i,
         "invalid_steps": 0, "repeated_steps": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for e in envs for i in range(3)
    ]  # fmt: skip
    from refine.eval import summarize

    runs_ = [RunData(tmp_path, m, summarize(recs), recs) for m in ("model-a", "model-b")]
    figs = plot_figures(runs_)
    hist = figs["steps_hist"]
    assert sorted(ax.get_title() for ax in hist.axes if ax.axison) == envs
    sp = figs["success_progress"]
    assert all(len(ax.lines) >= 2 for ax in sp.axes)  # one marker series per model
    for fig in figs.values():
        plt.close(fig)


def test_script_end_tag_in_observations_is_escaped(tmp_path):
    from refine.eval.report import RunData, render_html

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


def test_comment_opener_in_lm_text_cannot_swallow_the_viewer(tmp_path):
    """Regression (#16, item 9): '<!--<script>' in LM text put the data block in the HTML parser's double-escaped
    state, so the viewer's own script became part of it and the trajectory viewer was blank."""
    import json

    from refine.eval.report import RunData, render_html

    text = "<!--<script> x </script> & <b>"
    ep = {"env": "toy", "success": False, "progress": 0.0, "trajectory": [{"t": 0, "thought": text, "action": "a"}]}
    page = render_html([RunData(tmp_path, "r", {"envs": {}, "overall": {}}, [ep])], {})
    data = page.split('<script type="application/json" id="episodes-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    assert json.loads(data)[0]["steps"][0]["thought"] == text


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
    # Tables: one row per (run, env or overall, wording) -> a: (toy, maze, overall) x 2 wordings, b: toy + overall.
    body = dom.split('<table id="summary-table">', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr") == 1 + 6 + 2 and body.count('<tr class="small-n">') == 8
    # The viewer rendered the first episode (by JavaScript: these elements are not in the HTML file itself).
    assert "<option" not in files["html"].read_text()
    assert dom.count("<option") == 9  # 8 episodes of run a + 1 of run b
    steps = re.findall(r'<div class="step[^"]*">', dom)
    assert len(steps) == 6  # the first episode (maze, original actions, #0) is solved in 6 steps
    assert 'class="step invalid"' in dom and 'class="step repeated"' in dom
    assert "Action: take key" in dom and "Thought: step 0" in dom and "Observation: You are in a small room" in dom
    # The delta table (student - base, per env and overall) is in the rendered page.
    delta = dom.split('<table id="delta-table">', 1)[1].split("</table>", 1)[0]
    assert delta.count("<tr>") == 1 + 2 and "unpaired" in delta and "Δ success" in delta
