"""Export accepted trajectories of a run to training formats: OpenAI `messages` JSONL, ShareGPT JSON, HF `datasets`.

Every format uses the shared chat format of `refine.formats` (system = instructions + environment + actions, user =
observation, assistant = "Thought: ...\\nAction: ..."). Erroneous assistant turns, the ones the DM flags on the next
turn, carry `loss: false` (kept in context, masked from the loss); provenance travels on every row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from refine.data import Provenance, Trajectory
from refine.errors import ExportError
from refine.formats import format_assistant, format_first_user, format_system

__all__ = [
    "FORMATS",
    "export_run",
    "load_export",
    "messages_to_sharegpt",
    "provenance_of",
    "sharegpt_to_messages",
    "trajectory_to_messages",
    "trajectory_to_row",
]

Format = Literal["messages", "sharegpt", "hf"]
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "hf")
_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
_FROM_SHAREGPT = {v: k for k, v in _TO_SHAREGPT.items()}


def trajectory_to_messages(traj: Trajectory) -> list[dict[str, Any]]:
    """A trajectory as chat messages in the shared format, with `loss` on assistant turns.

    The first user message holds the task and the environment as the first observation; each DM observation is a
    user message (`Observation: ...`); DM turns after the last player turn are dropped (nothing follows to train).

    Example:
        >>> from refine.data import Script, Trajectory, Turn
        >>> t = Trajectory(script=Script(environment="A room.", tasks=["leave"], actions=[]), turns=[
        ...     Turn(role="player", thought="t", action="go window"),
        ...     Turn(role="dm", observation="No.", logic_error=True),
        ...     Turn(role="player", thought="t2", action="go door"),
        ...     Turn(role="dm", observation="Out.", task_completed=True)])
        >>> [(m["role"], m.get("loss")) for m in trajectory_to_messages(t)]
        [('system', None), ('user', None), ('assistant', False), ('user', None), ('assistant', True)]
    """
    t = traj.mark_losses()
    script = t.script
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": format_system(script.environment, script.describe_actions())},
        {"role": "user", "content": format_first_user(script.goal, script.environment)},
    ]
    last_player = max((i for i, u in enumerate(t.turns) if u.role == "player"), default=-1)
    for i, turn in enumerate(t.turns):
        if i > last_player:
            break
        if turn.role == "player":
            msgs.append(
                {"role": "assistant", "content": format_assistant(turn.thought, turn.action or ""), "loss": turn.loss}
            )
        elif turn.observation is not None:
            msgs.append({"role": "user", "content": f"Observation: {turn.observation.strip()}"})
    return msgs


def trajectory_to_row(traj: Trajectory) -> dict[str, Any]:
    """One `messages` JSONL row: `{"id", "messages", "provenance", "verdict"}`."""
    return {
        "id": traj.id,
        "messages": trajectory_to_messages(traj),
        "provenance": traj.provenance.model_dump(mode="json"),
        "verdict": traj.verdict.model_dump(mode="json") if traj.verdict else None,
    }


def messages_to_sharegpt(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages -> ShareGPT `conversations` (AgentTuning/AgentGym: `loss` on every turn, false off `gpt`)."""
    conv = []
    for m in messages:
        role = _TO_SHAREGPT.get(m["role"])
        if role is None:
            raise ExportError(f"Cannot export a message with role {m['role']!r} to ShareGPT (system/user/assistant).")
        conv.append(
            {"from": role, "value": m["content"], "loss": bool(m.get("loss", True)) if role == "gpt" else False}
        )
    return conv


def sharegpt_to_messages(conversations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """ShareGPT `conversations` -> chat messages (inverse of `messages_to_sharegpt`)."""
    msgs = []
    for c in conversations:
        role = _FROM_SHAREGPT.get(c["from"])
        if role is None:
            raise ExportError(f"Unknown ShareGPT speaker {c['from']!r}; expected system, human or gpt.")
        msg: dict[str, Any] = {"role": role, "content": c["value"]}
        if role == "assistant":
            msg["loss"] = bool(c.get("loss", True))
        msgs.append(msg)
    return msgs


def _hf_provenance(p: dict[str, Any]) -> dict[str, Any]:
    # Arrow needs one schema for all rows: per-model dicts become lists of records.
    return {
        "persona": p.get("persona", ""),
        "seed": p.get("seed"),
        "program_hash": p.get("program_hash", ""),
        "created_at": p.get("created_at", ""),
        "models": [{"role": k, "model": v} for k, v in (p.get("models") or {}).items()],
        "usage": [
            {
                "model": m,
                "prompt_tokens": int(u.get("prompt_tokens", 0)),
                "completion_tokens": int(u.get("completion_tokens", 0)),
                "calls": int(u.get("calls", 0)),
            }
            for m, u in (p.get("usage") or {}).items()
        ],
    }


def _provenance_from_hf(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "persona": p.get("persona") or "",
        "seed": p.get("seed"),
        "program_hash": p.get("program_hash") or "",
        "created_at": p.get("created_at") or "",
        "models": {m["role"]: m["model"] for m in p.get("models") or []},
        "usage": {
            u["model"]: {k: u[k] for k in ("prompt_tokens", "completion_tokens", "calls") if u.get(k) is not None}
            for u in p.get("usage") or []
        },
    }


def _accepted(run_dir: Path) -> list[Trajectory]:
    from refine.store import RunStore

    store = RunStore.open_existing(run_dir)
    out = []
    for i, rec in enumerate(store.records("accepted")):
        payload = rec.get("trajectory", rec)
        try:
            out.append(Trajectory.model_validate(payload))
        except ValueError as exc:
            raise ExportError(
                f"{run_dir}/accepted.jsonl record {i} (key {rec.get('key')}) is not a trajectory: {exc}"
            ) from None
    return out


def _dataset_card(run_dir: Path, rows: list[dict[str, Any]], fmt: str) -> str:
    from refine.store import RunStore, redact

    manifest = RunStore.open_existing(run_dir).manifest
    assistant = [m for r in rows for m in r["messages"] if m["role"] == "assistant"]
    masked = sum(1 for m in assistant if m.get("loss") is False)
    totals = manifest.get("totals") or {}
    config = json.dumps(redact(manifest.get("config", {})), indent=2, sort_keys=True)
    return "\n".join(
        [
            "---",
            "tags: [agentrefine, refinement-tuning, dspy-refine, synthetic]",
            "task_categories: [text-generation]",
            "---",
            "# AgentRefine refinement-tuning data",
            "",
            f"Exported by `refine export --format {fmt}` from run `{run_dir.name}` (dspy-refine).",
            "Each row is one verified trajectory in the shared chat format: system = instructions, environment and",
            "actions; user = observation; assistant = `Thought: ...\\nAction: ...`. Assistant turns that the",
            "environment flagged as errors carry `loss: false` (kept in context, excluded from the loss).",
            "",
            "## Counts",
            "",
            f"- rows (accepted trajectories): {len(rows)}",
            f"- rejected trajectories in the run: {totals.get('rejected', 'n/a')}",
            f"- assistant turns: {len(assistant)} ({masked} masked, {len(assistant) - masked} trained)",
            f"- program hash: `{manifest.get('program_hash', '')}`",
            f"- package versions: `{json.dumps(manifest.get('versions', {}), sort_keys=True)}`",
            "",
            "## Run config",
            "",
            "```json",
            config,
            "```",
            "",
        ]
    )


def export_run(run_dir: str | Path, fmt: Format | str, out: str | Path) -> dict[str, Any]:
    """Export the accepted trajectories of a run directory.

    Args:
        run_dir: a run directory written by `refine synth` (or any run with `accepted.jsonl` trajectories).
        fmt: `messages` (JSONL file), `sharegpt` (JSON file), or `hf` (a `datasets` folder plus README.md card).
        out: the output file (messages/sharegpt) or folder (hf).

    Returns:
        Counts: `{"rows", "assistant_turns", "masked_turns", "format", "out"}`.

    Raises:
        ExportError: unknown format, no accepted trajectory, or an unwritable output.
    """
    from refine.store import scrub_secrets

    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    run = Path(run_dir)
    trajs = _accepted(run)
    if not trajs:
        raise ExportError(f"Run {run} has no accepted trajectory to export (see its rejected.jsonl for the reasons).")
    rows = [trajectory_to_row(t) for t in trajs]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "messages":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        out_path.write_text(scrub_secrets(text), encoding="utf-8")
    elif fmt == "sharegpt":
        data = [
            {"id": r["id"], "conversations": messages_to_sharegpt(r["messages"]), "provenance": r["provenance"]}
            for r in rows
        ]
        out_path.write_text(scrub_secrets(json.dumps(data, ensure_ascii=False, indent=1)) + "\n", encoding="utf-8")
    else:
        try:
            import datasets
        except ImportError as exc:
            raise ExportError("The hf format needs `datasets`: pip install 'dspy-refine[train]'.") from exc
        hf_rows = [
            {
                "id": r["id"],
                "messages": [
                    {"role": m["role"], "content": m["content"], "loss": m.get("loss")} for m in r["messages"]
                ],
                "provenance": _hf_provenance(r["provenance"]),
                "verdict_reasons": list((r["verdict"] or {}).get("reasons", [])),
            }
            for r in rows
        ]
        if out_path.exists() and any(out_path.iterdir()):
            raise ExportError(f"{out_path} exists and is not empty; choose a new --out folder for the hf export.")
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            datasets.Dataset.from_list(hf_rows).save_to_disk(str(out_path))
        finally:
            if bars:
                datasets.enable_progress_bars()
        (out_path / "README.md").write_text(scrub_secrets(_dataset_card(run, rows, fmt)), encoding="utf-8")
    assistant = [m for r in rows for m in r["messages"] if m["role"] == "assistant"]
    return {
        "rows": len(rows),
        "assistant_turns": len(assistant),
        "masked_turns": sum(1 for m in assistant if m.get("loss") is False),
        "format": fmt,
        "out": str(out_path),
    }


def load_export(path: str | Path) -> list[dict[str, Any]]:
    """Read an export back as `messages` rows `{"id", "messages", "provenance"}` (any of the three formats)."""
    p = Path(path)
    if p.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(p))
        rows = []
        for r in ds:
            msgs = []
            for m in r["messages"]:
                msg = {"role": m["role"], "content": m["content"]}
                if m.get("loss") is not None:
                    msg["loss"] = bool(m["loss"])
                msgs.append(msg)
            rows.append({"id": r["id"], "messages": msgs, "provenance": _provenance_from_hf(r["provenance"])})
        return rows
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        return [
            {k: v for k, v in json.loads(line).items() if k in ("id", "messages", "provenance")}
            for line in text.splitlines()
            if line.strip()
        ]
    data = json.loads(text)
    return [
        {"id": r["id"], "messages": sharegpt_to_messages(r["conversations"]), "provenance": r["provenance"]}
        for r in data
    ]


def provenance_of(row: dict[str, Any]) -> Provenance:
    """The `Provenance` model of an exported row."""
    return Provenance.model_validate(row["provenance"])
