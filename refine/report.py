"""Evaluation reports: matplotlib PNGs and one self-contained HTML page with tables and a trajectory viewer.

`build_report([run_dir, ...], out_dir)` reads the `summary.json` and `episodes.jsonl` of each `refine eval` run and
writes `success_progress.png` (success and progress rate per environment and run), `steps_hist.png` (episode
lengths), `robustness.png` (when runs hold perturbed episodes) and `report.html`: one file with inline CSS and
JavaScript and the images embedded as data URIs, so it can be mailed or archived as is. The page shows the summary
tables (per environment, held-in/held-out, perturbation drop) and a viewer that replays any episode step by step
(observation, thought, action, invalid/repeated flags, progress).
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

__all__ = ["RunData", "build_report", "load_run", "render_html"]

_MAX_TEXT = 4000


class RunData:
    """One evaluation run: its label, summary and episode records."""

    def __init__(self, path: Path, label: str, summary: dict[str, Any], episodes: list[dict[str, Any]]) -> None:
        self.path = path
        self.label = label
        self.summary = summary
        self.episodes = episodes


def load_run(path: str | os.PathLike[str]) -> RunData:
    """Read a `refine eval` run directory (summary recomputed from the episodes if summary.json is missing)."""
    from refine.eval import summarize
    from refine.store import RunStore

    p = Path(path)
    store = RunStore.open_existing(p)
    episodes = list(store.records("episodes"))
    if not episodes:
        raise RunStoreError(f"{p} holds no evaluation episodes (episodes.jsonl); pass the --out of `refine eval`.")
    config = store.manifest.get("config", {})
    summary_file = p / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
    else:
        summary = summarize(episodes, config.get("held_in", []))
    label = config.get("model") or config.get("agent") or p.name
    return RunData(p, str(label), summary, episodes)


def _unique_labels(runs: Sequence[RunData]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.label in seen:
            seen[r.label] += 1
            r.label = f"{r.label} ({r.path.name})"
        else:
            seen[r.label] = 1


def _plots(runs: Sequence[RunData], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}
    envs = sorted({e for r in runs for e in r.summary.get("envs", {})})
    width = 0.8 / max(1, len(runs))
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(envs) + 3), 3.6))
    for ax, metric, title in ((axes[0], "success_rate", "Success rate"), (axes[1], "progress_rate", "Progress rate")):
        for i, run in enumerate(runs):
            vals = [run.summary["envs"].get(e, {}).get("base", {}).get(metric, 0.0) for e in envs]
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(envs))]
            ax.bar(xs, vals, width=width, label=run.label)
        ax.set_xticks(range(len(envs)), envs, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    files["success_progress"] = out / "success_progress.png"
    fig.savefig(files["success_progress"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    max_steps = max((ep["steps"] for r in runs for ep in r.episodes), default=1)
    bins = range(0, max_steps + 2)
    for run in runs:
        ax.hist([ep["steps"] for ep in run.episodes], bins=bins, alpha=0.55, label=run.label)
    ax.set_xlabel("steps per episode")
    ax.set_ylabel("episodes")
    ax.set_title("Episode length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files["steps_hist"] = out / "steps_hist.png"
    fig.savefig(files["steps_hist"], dpi=100)
    plt.close(fig)

    perturbed = [r for r in runs if "perturbed" in r.summary.get("overall", {})]
    if perturbed:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        labels = [r.label for r in perturbed]
        base = [r.summary["overall"]["base"]["progress_rate"] for r in perturbed]
        pert = [r.summary["overall"]["perturbed"]["progress_rate"] for r in perturbed]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], base, width=0.4, label="original actions")
        ax.bar([x + 0.2 for x in xs], pert, width=0.4, label="reworded actions")
        ax.set_xticks(list(xs), labels, rotation=15)
        ax.set_ylim(0, 1)
        ax.set_title("Robustness: progress rate")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["robustness"] = out / "robustness.png"
        fig.savefig(files["robustness"], dpi=100)
        plt.close(fig)
    return files


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}" if isinstance(x, int | float) else "–"


def _summary_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        envs = run.summary.get("envs", {})
        for env, entry in sorted(envs.items()):
            for variant in ("base", "perturbed"):
                m = entry.get(variant)
                if not m:
                    continue
                rows.append(
                    "<tr>"
                    f"<td>{html.escape(run.label)}</td><td>{html.escape(env)}</td>"
                    f"<td>{'held-in' if entry.get('held_in') else 'held-out'}</td><td>{variant}</td>"
                    f"<td>{m['episodes']}</td><td>{_pct(m['success_rate'])}</td><td>{_pct(m['progress_rate'])}</td>"
                    f"<td>{_pct(m['invalid_rate'])}</td><td>{_pct(m['stuck_rate'])}</td>"
                    f"<td>{m['mean_steps']:.1f}</td><td>{m['prompt_tokens'] + m['completion_tokens']}</td>"
                    f"<td>{m.get('errors', 0)}</td></tr>"
                )
    head = (
        "<tr><th>run</th><th>env</th><th>split</th><th>actions</th><th>episodes</th><th>success %</th>"
        "<th>progress %</th><th>invalid %</th><th>stuck %</th><th>mean steps</th><th>tokens</th><th>errors</th></tr>"
    )
    return f'<table id="summary-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _groups_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        for group in ("overall", "held_in", "held_out"):
            g = run.summary.get(group)
            if not g:
                continue
            base, pert, drop = g.get("base", {}), g.get("perturbed"), g.get("drop")
            rows.append(
                "<tr>"
                f"<td>{html.escape(run.label)}</td><td>{group.replace('_', '-')}</td>"
                f"<td>{html.escape(', '.join(g.get('envs', [])))}</td>"
                f"<td>{_pct(base.get('success_rate'))}</td><td>{_pct(base.get('progress_rate'))}</td>"
                f"<td>{_pct(pert['success_rate']) if pert else '–'}</td>"
                f"<td>{_pct(pert['progress_rate']) if pert else '–'}</td>"
                f"<td>{_pct(drop['success_rate']) if drop else '–'}</td>"
                f"<td>{_pct(drop['progress_rate']) if drop else '–'}</td></tr>"
            )
    head = (
        "<tr><th>run</th><th>group</th><th>envs</th><th>success %</th><th>progress %</th>"
        "<th>reworded success %</th><th>reworded progress %</th><th>success drop</th><th>progress drop</th></tr>"
    )
    return f'<table id="groups-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


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
    # Inside <script>, "</" would end the element early.
    return json.dumps(eps, ensure_ascii=False).replace("</", "<\\/")


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
    o.textContent = ep.run + ' | ' + ep.env + ' | ' + ep.variant + ' #' + ep.index + ' | ' +
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
<h2>Summary per environment</h2>
<p>Progress rate = mean over episodes of the best fraction of subgoals reached (AgentBoard); invalid and stuck rates
are per step; "reworded" rows use the perturbed action formats.</p>
{_summary_table(runs)}
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
