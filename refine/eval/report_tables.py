"""The HTML tables of `refine.eval.report`: summary, held-in/held-out, deltas, reference bounds, solvable episodes,
settings and warnings (each a `<table id=...>` string)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from refine.eval.report import RunData


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}" if isinstance(x, int | float) else "–"


def _ci(m: Mapping[str, Any], key: str) -> str:
    ci = m.get(key)
    return f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f}" if ci else "–"


def _rate(m: Mapping[str, Any], metric: str) -> str:
    """'42.0 [30–55]': the rate in percent with its 95% interval."""
    return f"{_pct(m.get(f'{metric}_rate'))} <small>[{_ci(m, f'{metric}_ci')}]</small>"


def _signed(d: Mapping[str, Any]) -> str:
    lo, hi = d["ci"]
    return f"{100 * d['delta']:+.1f} <small>[{100 * lo:+.0f}, {100 * hi:+.0f}]</small>"


def _run_label(run: RunData) -> str:
    text = html.escape(run.label)
    return text + (' <span class="partial">partial</span>' if run.partial else "")


def _summary_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        envs = run.summary.get("envs", {})
        entries = [*sorted(envs.items()), ("overall", run.summary.get("overall", {}))]
        for env, entry in entries:
            for variant in ("base", "perturbed"):
                m = entry.get(variant)
                if not m:
                    continue
                split = "macro avg" if env == "overall" else ("held-in" if entry.get("held_in") else "held-out")
                small = ' class="small-n"' if m.get("small_n") else ""
                rows.append(
                    f"<tr{small}>"
                    f"<td>{_run_label(run)}</td><td>{html.escape(env)}</td><td>{split}</td>"
                    f"<td>{'reworded' if variant == 'perturbed' else 'original'}</td>"
                    f"<td>{m.get('n', m['episodes'])}</td><td>{_rate(m, 'success')}</td><td>{_rate(m, 'progress')}</td>"
                    f"<td>{_pct(m['invalid_rate'])}</td><td>{_pct(m['stuck_rate'])}</td>"
                    f"<td>{m['mean_steps']:.1f}</td><td>{m['prompt_tokens'] + m['completion_tokens']}</td>"
                    f"<td>{m.get('errors', 0)}</td></tr>"
                )
    head = (
        "<tr><th>run</th><th>env</th><th>split</th><th>actions</th><th>n</th><th>success % [95% CI]</th>"
        "<th>progress % [95% CI]</th><th>invalid %</th><th>stuck %</th><th>mean steps</th><th>tokens</th>"
        "<th>errors</th></tr>"
    )
    return f'<table id="summary-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _groups_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        for group in ("overall", "held_in", "held_out"):
            g = run.summary.get(group)
            if not g:
                continue
            orig, pert, drop = g.get("base", {}), g.get("perturbed"), g.get("drop")
            rows.append(
                "<tr>"
                f"<td>{_run_label(run)}</td><td>{group.replace('_', '-')}</td>"
                f"<td>{html.escape(', '.join(g.get('envs', [])))}</td>"
                f"<td>{_rate(orig, 'success')}</td><td>{_rate(orig, 'progress')}</td>"
                f"<td>{_rate(pert, 'success') if pert else '–'}</td>"
                f"<td>{_rate(pert, 'progress') if pert else '–'}</td>"
                f"<td>{_pct(drop['success_rate']) if drop else '–'}</td>"
                f"<td>{_pct(drop['progress_rate']) if drop else '–'}</td></tr>"
            )
    head = (
        "<tr><th>run</th><th>group</th><th>envs</th><th>success %</th><th>progress %</th>"
        "<th>reworded success %</th><th>reworded progress %</th><th>success drop</th><th>progress drop</th></tr>"
    )
    return f'<table id="groups-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _delta_table(runs: Sequence[RunData]) -> str:
    """Each run minus the first (the reference run), per environment and overall, with 95% intervals."""
    from refine.eval.summary import compare

    if len(runs) < 2:
        return '<p id="delta-none">One run only: give two or more run directories to compare them.</p>'
    ref = runs[0]
    rows = []
    for run in runs[1:]:
        diff = compare(ref.episodes, run.episodes)
        cells = [(env, by) for env, by in sorted(diff["envs"].items())] + [("overall", diff["overall"])]
        for env, by in cells:
            for variant, d in by.items():
                rows.append(
                    "<tr>"
                    f"<td>{_run_label(run)} − {_run_label(ref)}</td><td>{html.escape(env)}</td>"
                    f"<td>{'reworded' if variant == 'perturbed' else 'original'}</td>"
                    f"<td>{d['success']['n_a']} / {d['success']['n_b']}</td>"
                    f"<td>{'paired' if d['success']['paired'] else 'unpaired'}</td>"
                    f"<td>{_signed(d['success'])}</td><td>{_signed(d['progress'])}</td></tr>"
                )
    head = (
        "<tr><th>comparison</th><th>env</th><th>actions</th><th>n (ref / run)</th><th>episodes</th>"
        "<th>Δ success pts [95% CI]</th><th>Δ progress pts [95% CI]</th></tr>"
    )
    return f'<table id="delta-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _bounds_table(runs: Sequence[RunData]) -> str:
    refs = [r for r in runs if r.agent in ("expert", "random")]
    if not refs:
        return (
            '<p id="bounds-none">No reference runs: add the runs of <code>refine eval --agent expert</code> (upper '
            "bound) and <code>--agent random</code> (lower bound) with the same settings.</p>"
        )
    rows = []
    for run in sorted(refs, key=lambda r: r.agent):
        for env, entry in sorted(run.summary.get("envs", {}).items()):
            m = entry.get("base")
            if m:
                rows.append(
                    f"<tr><td>{html.escape(run.agent)}</td><td>{_run_label(run)}</td><td>{html.escape(env)}</td>"
                    f"<td>{m.get('n', m['episodes'])}</td><td>{_rate(m, 'success')}</td>"
                    f"<td>{_rate(m, 'progress')}</td></tr>"
                )
    head = "<tr><th>bound</th><th>run</th><th>env</th><th>n</th><th>success %</th><th>progress %</th></tr>"
    return f'<table id="bounds-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _settings_table(runs: Sequence[RunData]) -> str:
    rows = []
    for run in runs:
        st = run.settings
        seeds = st.get("seeds") or ["?", "?"]
        decoding = ", ".join(f"{k}={v}" for k, v in sorted((st.get("decoding") or {}).items())) or "–"
        played = f"{len(run.episodes)}" + (f" of {run.expected}" if run.expected is not None else "")
        rows.append(
            f"<tr><td>{_run_label(run)}</td><td>{html.escape(str(st.get('suite', 'refine')))}</td>"
            f"<td>{html.escape(str(st.get('agent') or '–'))}</td>"
            f"<td>{html.escape(', '.join(st.get('envs') or []))}</td><td>{st.get('max_steps', '–')}</td>"
            f"<td>{st.get('episodes', '–')}</td><td>{seeds[0]}–{seeds[-1]}</td>"
            f"<td>{'yes' if st.get('perturb') else 'no'}</td><td>{html.escape(decoding)}</td>"
            f"<td>{played}</td></tr>"
        )
    head = (
        "<tr><th>run</th><th>suite</th><th>agent</th><th>envs</th><th>max steps</th><th>episodes per env</th>"
        "<th>seeds</th><th>reworded too</th><th>decoding</th><th>episodes played</th></tr>"
    )
    return f'<table id="settings-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _warnings(runs: Sequence[RunData]) -> str:
    items = []
    for run in runs:
        if run.partial:
            of = f" of {run.expected}" if run.expected is not None else ""
            items.append(
                f"{html.escape(run.label)}: PARTIAL run, {len(run.episodes)}{of} episodes played (the eval was "
                "killed or is still running); its numbers are not final. Rerun `refine eval` with --resume."
            )
        items += [f"{html.escape(run.label)}: {html.escape(w)}" for w in run.summary.get("warnings", [])]
    if not items:
        return ""
    return '<ul id="warnings">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _solvable_table(runs: Sequence[RunData]) -> str:
    """Per run and environment: how many episodes the env's expert solves within the step bound, and the success
    and progress rates over those beside the plain rates (over all episodes)."""
    rows = []
    for run in runs:
        envs = run.summary.get("envs", {})
        entries = [*sorted(envs.items()), ("overall", run.summary.get("overall", {}))]
        for env, entry in entries:
            m = entry.get("base") or {}
            sv = m.get("solvable")
            if not sv:
                continue
            flagged = sv["n"] + sv["unsolvable"]
            rows.append(
                f"<tr><td>{_run_label(run)}</td><td>{html.escape(env)}</td><td>{m.get('n', m.get('episodes', 0))}</td>"
                f"<td>{sv['n']} of {flagged}</td><td>{sv['unflagged']}</td>"
                f"<td>{_rate(m, 'success')}</td><td>{_rate(sv, 'success')}</td>"
                f"<td>{_rate(m, 'progress')}</td><td>{_rate(sv, 'progress')}</td></tr>"
            )
    if not rows:
        return '<p id="solvable-none">No environment flagged which of its episodes can be solved within the bound.</p>'
    head = (
        "<tr><th>run</th><th>env</th><th>n</th><th>solvable (of flagged)</th><th>not flagged</th>"
        "<th>success % (all)</th><th>success % (solvable only)</th><th>progress % (all)</th>"
        "<th>progress % (solvable only)</th></tr>"
    )
    return f'<table id="solvable-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
