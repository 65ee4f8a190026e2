"""Evaluation reports: matplotlib PNGs and one self-contained HTML page with tables and a trajectory viewer.

`build_report([run_dir, ...], out_dir)` reads the `summary.json` and `episodes.jsonl` of each `refine eval` run and
writes `success_progress.png` (success and progress rate per environment and run), `steps_hist.png` (episode
lengths), `robustness.png` (when runs hold perturbed episodes) and `report.html`: one file with inline CSS and
JavaScript and the images embedded as data URIs, so it can be mailed or archived as is. The page shows the tables
(per environment, held-in/held-out, perturbation drop, deltas, bounds, solvable episodes; built in
`refine.eval.report_tables`) and a viewer that replays any episode step by step (observation, thought, action,
invalid/repeated flags, progress).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine.errors import RunStoreError
from refine.eval.report_tables import (
    _bounds_table,
    _delta_table,
    _groups_table,
    _settings_table,
    _solvable_table,
    _summary_table,
    _warnings,
)

__all__ = ["RunData", "build_report", "load_run", "plot_figures", "render_html"]

_MAX_TEXT = 4000


class RunData:
    """One evaluation run: its label, summary and episode records; `partial` when it did not finish."""

    def __init__(
        self,
        path: Path,
        label: str,
        summary: dict[str, Any],
        episodes: list[dict[str, Any]],
        *,
        partial: bool = False,
        expected: int | None = None,
    ) -> None:
        self.path = path
        self.label = label
        self.summary = summary
        self.episodes = episodes
        self.partial = partial
        self.expected = expected

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.summary.get("settings") or {})

    @property
    def agent(self) -> str:
        return str(self.settings.get("agent") or "")


def load_run(path: str | os.PathLike[str]) -> RunData:
    """Read a `refine eval` run directory.

    The summary is always recomputed from `episodes.jsonl` (a resumed run that was killed leaves a stale
    `summary.json`); a run whose manifest is not "finished", or that holds fewer episodes than its config asks for,
    is `partial`.
    """
    from refine.eval.config import EvalConfig, episode_specs
    from refine.eval.summary import summarize
    from refine.store import RunStore

    p = Path(path)
    store = RunStore.open_existing(p)
    episodes = list(store.records("episodes"))
    if not episodes:
        raise RunStoreError(f"{p} holds no evaluation episodes (episodes.jsonl); pass the --out of `refine eval`.")
    manifest = store.manifest
    config = manifest.get("config", {})
    expected: int | None = None
    settings: dict[str, Any] | None = None
    try:
        cfg = EvalConfig(**{k: v for k, v in config.items() if k in EvalConfig.model_fields})
        expected, settings = len(episode_specs(cfg)), cfg.settings()
    except ValueError:  # an older or hand-written manifest: no expected count, settings as recorded
        pass
    summary_file = p / "summary.json"
    old = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    summary = summarize(episodes, config.get("held_in", []), settings=old.get("settings") or settings)
    if "run" in old:
        summary["run"] = old["run"]
    partial = manifest.get("status") != "finished" or (expected is not None and len(episodes) < expected)
    label = config.get("model") or config.get("agent") or p.name
    return RunData(p, str(label), summary, episodes, partial=partial, expected=expected)


def _unique_labels(runs: Sequence[RunData]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.label in seen:
            seen[r.label] += 1
            r.label = f"{r.label} ({r.path.name})"
        else:
            seen[r.label] = 1


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def plot_figures(runs: Sequence[RunData]) -> dict[str, Any]:
    """The report's matplotlib figures by name (the caller saves and closes them).

    Every run has one colour in every plot. Rates are drawn as a marker with its 95% interval (a bar of height 0 is
    invisible, and most small models score 0 on some environment), with the value written next to it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    envs = sorted({e for r in runs for e in r.summary.get("envs", {})})
    slot = 0.8 / max(1, len(runs))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(envs) * max(1, len(runs)) ** 0.5 + 4), 3.8))
    for ax, metric, title in ((axes[0], "success", "Success rate"), (axes[1], "progress", "Progress rate")):
        for i, run in enumerate(runs):
            cells = [(j, run.summary["envs"].get(e, {}).get("base")) for j, e in enumerate(envs)]
            cells = [(j, m) for j, m in cells if m]
            if not cells:
                continue
            xs = [j + (i - (len(runs) - 1) / 2) * slot for j, _ in cells]
            ys = [m[f"{metric}_rate"] for _, m in cells]
            cis = [m.get(f"{metric}_ci") or [y, y] for (_, m), y in zip(cells, ys, strict=True)]
            err = [[max(0.0, y - c[0]) for y, c in zip(ys, cis, strict=True)],
                   [max(0.0, c[1] - y) for y, c in zip(ys, cis, strict=True)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=_color(i), capsize=3, markersize=6,
                        label=run.label + (" (partial)" if run.partial else ""))  # fmt: skip
            for x, y, (_, m) in zip(xs, ys, cells, strict=True):
                ax.annotate(f"{100 * y:.0f}% n={m.get('n', m.get('episodes'))}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=_color(i))  # fmt: skip
        ax.set_xticks(range(len(envs)))
        ax.set_xticklabels(envs, rotation=20)
        ax.set_xlim(-0.6, len(envs) - 0.4)
        ax.set_ylim(-0.05, 1.1)
        ax.set_title(title + " (95% interval)")
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    figs["success_progress"] = fig

    # Episode lengths: one panel per environment, runs side by side in each bin (never drawn over each other).
    cols = min(4, max(1, len(envs)))
    rows = -(-max(1, len(envs)) // cols)
    fig, axes2 = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 2.8 * rows), squeeze=False)
    max_steps = max((ep["steps"] for r in runs for ep in r.episodes), default=1)
    bins = list(range(0, max_steps + 2))
    for k, env in enumerate(envs or [""]):
        ax = axes2[k // cols][k % cols]
        data = [[ep["steps"] for ep in r.episodes if ep["env"] == env and ep.get("variant", "base") == "base"]
                for r in runs]  # fmt: skip
        shown = [(i, d) for i, d in enumerate(data) if d]
        if shown:
            ax.hist([d for _, d in shown], bins=bins, color=[_color(i) for i, _ in shown],
                    label=[runs[i].label for i, _ in shown], align="left", rwidth=0.9)  # fmt: skip
        ax.set_title(env or "episodes", fontsize=9)
        ax.set_xlabel("steps", fontsize=8)
        ax.set_ylabel("episodes", fontsize=8)
    for k in range(len(envs or [""]), rows * cols):
        axes2[k // cols][k % cols].axis("off")
    handles = [matplotlib.patches.Patch(color=_color(i), label=r.label) for i, r in enumerate(runs)]
    fig.legend(handles=handles, fontsize=8, loc="upper right")
    fig.suptitle("Episode length (original actions)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.85, 0.95))
    figs["steps_hist"] = fig

    perturbed = [(i, r) for i, r in enumerate(runs) if "perturbed" in r.summary.get("overall", {})]
    if perturbed:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        labels = [r.label for _, r in perturbed]
        xs = list(range(len(labels)))
        for off, key, hatch in ((-0.2, "base", ""), (0.2, "perturbed", "//")):
            ys = [r.summary["overall"][key]["progress_rate"] for _, r in perturbed]
            cis = [
                r.summary["overall"][key].get("progress_ci") or [y, y] for (_, r), y in zip(perturbed, ys, strict=True)
            ]
            err = [[max(0.0, y - c[0]) for y, c in zip(ys, cis, strict=True)],
                   [max(0.0, c[1] - y) for y, c in zip(ys, cis, strict=True)]]  # fmt: skip
            ax.bar([x + off for x in xs], [max(y, 0.005) for y in ys], width=0.4, yerr=err, capsize=3, hatch=hatch,
                   color=[_color(i) for i, _ in perturbed], edgecolor="black")  # fmt: skip
        ax.legend(handles=[
            matplotlib.patches.Patch(facecolor="white", edgecolor="black", label="original actions"),
            matplotlib.patches.Patch(facecolor="white", edgecolor="black", hatch="//", label="reworded actions"),
        ], fontsize=8)  # fmt: skip
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=15)
        ax.set_ylim(0, 1.05)
        ax.set_title("Robustness: progress rate (95% interval)")
        fig.tight_layout()
        figs["robustness"] = fig
    return figs


def _plots(runs: Sequence[RunData], out: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}
    for name, fig in plot_figures(runs).items():
        files[name] = out / f"{name}.png"
        fig.savefig(files[name], dpi=100)
        plt.close(fig)
    return files


def _clip(text: Any) -> Any:
    if isinstance(text, str) and len(text) > _MAX_TEXT:
        return text[:_MAX_TEXT] + " …"
    return text


def _episodes_json(runs: Sequence[RunData]) -> str:
    eps = []
    for run in runs:
        for ep in sorted(run.episodes, key=lambda e: (e["env"], e.get("variant", "base"), e.get("index", 0))):
            eps.append(
                {
                    "run": run.label,
                    "env": ep["env"],
                    "variant": ep.get("variant", "base"),
                    "index": ep.get("index", 0),
                    "task": ep.get("task"),
                    "instruction": _clip(ep.get("instruction", "")),
                    "success": bool(ep.get("success")),
                    "progress": ep.get("progress", 0.0),
                    "error": ep.get("error"),
                    "steps": [{k: _clip(v) for k, v in s.items()} for s in ep.get("trajectory", [])],
                }
            )
    # Inside <script>, "</" ends the element and "<!--" opens an escaped state that swallows the next script:
    # no "<" may appear in the data at all (JSON reads the escape back as "<").
    return json.dumps(eps, ensure_ascii=False).replace("<", "\\u003c")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{border:1px solid #d5d9de;padding:4px 8px;text-align:right}
th{background:#f2f4f7}td:nth-child(-n+4){text-align:left}img{max-width:100%;border:1px solid #eee;margin:6px 0}
.step{border:1px solid #d5d9de;border-radius:6px;padding:8px 10px;margin:8px 0;background:#fbfcfd}
.step.invalid{border-left:5px solid #d9534f}.step.repeated{background:#fff8e6}.obs{white-space:pre-wrap;color:#333}
.thought{color:#555;font-style:italic;white-space:pre-wrap}.action{font-family:ui-monospace,monospace;font-weight:600}
.flag{display:inline-block;font-size:.75em;padding:1px 6px;border-radius:9px;margin-left:6px;background:#eee}
.flag.bad{background:#f8d7da}.flag.warn{background:#ffe8a1}.flag.good{background:#d4edda}
#episode-select{font-size:.95em;padding:3px;max-width:100%}.meta{color:#555;margin:6px 0}
.partial{background:#f8d7da;border-radius:9px;padding:0 6px;font-size:.8em}tr.small-n td{color:#6b5a00}
#warnings{background:#fff8e6;border:1px solid #ffe8a1;padding:8px 28px}small{color:#666}
"""

_JS = """
(function(){
  var episodes = JSON.parse(document.getElementById('episodes-data').textContent);
  var sel = document.getElementById('episode-select');
  var view = document.getElementById('trajectory');
  function el(tag, cls, text){var e=document.createElement(tag); if(cls) e.className=cls;
    if(text!==undefined && text!==null) e.textContent=text; return e;}
  episodes.forEach(function(ep, i){
    var o = document.createElement('option'); o.value = i;
    o.textContent = ep.run + ' | ' + ep.env + ' | ' + (ep.variant === 'perturbed' ? 'reworded' : 'original') +
      ' #' + ep.index + ' | ' +
      (ep.success ? 'success' : 'fail') + ' | progress ' + Math.round(100*ep.progress) + '%';
    sel.appendChild(o);
  });
  function show(i){
    var ep = episodes[i]; view.innerHTML = '';
    if(!ep){ return; }
    var meta = el('div','meta');
    meta.appendChild(el('div', null, 'Task: ' + (ep.instruction || '')));
    meta.appendChild(el('div', null, 'Level/task: ' + (ep.task || '') + ' | steps: ' + ep.steps.length +
      ' | success: ' + ep.success + (ep.error ? ' | error: ' + ep.error : '')));
    view.appendChild(meta);
    ep.steps.forEach(function(s){
      var d = el('div', 'step' + (s.invalid ? ' invalid' : '') + (s.repeated ? ' repeated' : ''));
      var h = el('div', null); h.appendChild(el('strong', null, 'Step ' + (s.t + 1)));
      if(s.invalid) h.appendChild(el('span','flag bad','invalid'));
      if(s.repeated) h.appendChild(el('span','flag warn','repeated'));
      if(s.done) h.appendChild(el('span','flag good','done'));
      h.appendChild(el('span','flag','progress ' + Math.round(100*(s.progress||0)) + '%'));
      d.appendChild(h);
      d.appendChild(el('div','obs','Observation: ' + (s.observation || '')));
      d.appendChild(el('div','thought','Thought: ' + (s.thought || '')));
      var act = (s.action === null || s.action === undefined) ? '(none)' : s.action;
      d.appendChild(el('div','action','Action: ' + act));
      if(s.reason) d.appendChild(el('div','obs','Reason: ' + s.reason));
      d.appendChild(el('div','obs','Feedback: ' + (s.feedback || '')));
      view.appendChild(d);
    });
  }
  sel.addEventListener('change', function(){ show(parseInt(sel.value, 10)); });
  if(episodes.length){ sel.value = 0; show(0); }
})();
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(runs: Sequence[RunData], images: dict[str, Path], title: str = "dspy-refine evaluation report") -> str:
    """The self-contained report page."""
    imgs = "".join(_img(p, name) for name, p in images.items())
    sources = "".join(f"<li>{html.escape(r.label)}: <code>{html.escape(str(r.path))}</code></li>" for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul>{sources}</ul>
{_warnings(runs)}
<h2>Eval settings</h2>
{_settings_table(runs)}
<h2>Summary per environment</h2>
<p>Progress rate = mean over episodes of the best fraction of subgoals reached (AgentBoard); invalid and stuck rates
are per step. Brackets: 95% interval (Wilson for success, bootstrap for progress and for the macro average over
environments). "original" and "reworded" name the action wording; rows in brown have fewer than 20 episodes.</p>
{_summary_table(runs)}
<h2>Differences from the reference run ({html.escape(runs[0].label) if runs else "–"})</h2>
<p>Each later run minus the first run given, in percentage points with a 95% interval; paired by episode
(environment, task, seed) where both runs played the same episodes. An interval that holds 0 is no evidence of a
difference.</p>
{_delta_table(runs)}
<h2>Reference bounds</h2>
{_bounds_table(runs)}
<h2>Episodes solvable within the step bound</h2>
<p>An environment flags each episode <code>solvable</code> when its own expert (BabyAI's bot, the PDDL planner,
ScienceWorld's gold path) reaches the goal within the step bound; the plain rates count every episode, the
"solvable only" ones leave the others out.</p>
{_solvable_table(runs)}
<h2>Held-in / held-out and robustness</h2>
{_groups_table(runs)}
<h2>Plots</h2>
{imgs}
<h2>Trajectories</h2>
<select id="episode-select" aria-label="episode"></select>
<div id="trajectory"></div>
<script type="application/json" id="episodes-data">{_episodes_json(runs)}</script>
<script>{_JS}</script>
</body></html>
"""


def build_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the PNGs and report.html for one or more eval runs into `out`; returns the written files by name."""
    if not run_dirs:
        raise RunStoreError("No run directories given; pass one or more --out directories of `refine eval`.")
    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _plots(runs, out_dir)
    page = out_dir / "report.html"
    page.write_text(render_html(runs, files), encoding="utf-8")
    files["html"] = page
    return files
