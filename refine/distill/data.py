"""Training rows for distillation: load them from a run directory or an exported dataset, and apply the ablations.

A row is ``{"id": str, "messages": [{"role", "content", "loss"?}], "provenance": {...}}`` in the shared chat format
(`refine.formats`). Accepted sources:

* a run directory (``manifest.json`` + ``accepted.jsonl``): accepted trajectories, converted with
  ``refine.export.trajectory_to_messages``;
* a messages JSONL file (one row per line, or ShareGPT rows);
* a Hugging Face datasets folder (``save_to_disk``) with a ``messages`` or ``conversations`` column;
* a ShareGPT JSON file: a list of ``{"conversations": [{"from", "value", "loss"?}]}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refine.errors import TrainingError

__all__ = ["apply_ablation", "load_rows", "normalize_row", "trajectory_to_row"]

logger = logging.getLogger(__name__)

_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "observation": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


def trajectory_to_row(traj: Any) -> dict[str, Any]:
    """One accepted `Trajectory` (model or JSON dict) -> a training row with per-turn loss flags."""
    from refine.data import Trajectory

    t = traj if isinstance(traj, Trajectory) else Trajectory.model_validate(traj)
    from refine.export import trajectory_to_messages

    return {"id": t.id, "messages": trajectory_to_messages(t), "provenance": t.provenance.model_dump(mode="json")}


def normalize_row(row: Mapping[str, Any], where: str = "row") -> dict[str, Any]:
    """Accept a messages row or a ShareGPT row and return a messages row; raise `TrainingError` naming `where`."""
    if "messages" in row and row["messages"] is not None:
        msgs = []
        for m in row["messages"]:
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise TrainingError(f"{where}: every message needs 'role' and 'content', got {m!r:.80}")
            msg = {"role": m["role"], "content": m["content"]}
            if m["role"] == "assistant" and m.get("loss") is not None:
                msg["loss"] = bool(m["loss"])
            msgs.append(msg)
    elif "conversations" in row and row["conversations"] is not None:
        msgs = []
        for m in row["conversations"]:
            role = _SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
            if role is None:
                raise TrainingError(f"{where}: unknown ShareGPT speaker {m.get('from')!r}; use system, human or gpt")
            msg = {"role": role, "content": m.get("value", "")}
            if role == "assistant" and m.get("loss") is not None:
                msg["loss"] = bool(m["loss"])
            msgs.append(msg)
    elif "script" in row and "turns" in row:
        return trajectory_to_row(row)
    else:
        raise TrainingError(f"{where}: no 'messages' or 'conversations' field; export the run with `refine export`")
    rid = row.get("id") or _row_id(msgs)
    return {"id": str(rid), "messages": msgs, "provenance": dict(row.get("provenance") or {})}


def _row_id(msgs: list[dict[str, Any]]) -> str:
    from refine.data import content_id

    return content_id(msgs)


def _from_run_dir(path: Path) -> list[dict[str, Any]]:
    from refine.store import RunStore

    store = RunStore.open_existing(path)
    rows = []
    for rec in store.records("accepted"):
        payload = rec.get("trajectory", rec)
        payload = {k: v for k, v in payload.items() if k in ("id", "script", "turns", "provenance", "verdict")}
        try:
            rows.append(trajectory_to_row(payload))
        except Exception as exc:
            raise TrainingError(f"{path}/accepted.jsonl: record {rec.get('key')!r} is not a trajectory: {exc}") from exc
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(normalize_row(json.loads(line), f"{path}:{n}"))
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path}:{n} is not valid JSON ({exc.msg})") from exc
    return rows


def load_rows(source: str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Load training rows from a run directory, a JSONL/JSON file, a datasets folder, or an iterable of rows."""
    if not isinstance(source, str | Path):
        return [normalize_row(r, f"row {i}") for i, r in enumerate(source)]
    path = Path(source)
    if not path.exists():
        raise TrainingError(f"training data {path} does not exist; pass a run directory or an exported dataset")
    if path.is_dir():
        if (path / "manifest.json").exists():
            rows = _from_run_dir(path)
        elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
            rows = [normalize_row(r, f"{path}[{i}]") for i, r in enumerate(ds)]
        else:
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise TrainingError(
                    f"{path} is neither a run directory (manifest.json), a datasets folder nor holds *.jsonl files"
                )
            rows = [r for f in files for r in _read_jsonl(f)]
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path} is not valid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise TrainingError(f"{path}: expected a JSON list of rows (ShareGPT), got {type(data).__name__}")
        rows = [normalize_row(r, f"{path}[{i}]") for i, r in enumerate(data)]
    else:
        raise TrainingError(f"{path}: unknown data format; use .jsonl, .json, a datasets folder or a run directory")
    if not rows:
        raise TrainingError(f"{path} holds no training rows (no accepted trajectories?)")
    return rows


def apply_ablation(rows: Iterable[Mapping[str, Any]], ablation: str) -> list[dict[str, Any]]:
    """Apply a paper ablation to rows.

    * ``masked`` (default): unchanged; erroneous assistant turns carry ``loss: false``.
    * ``trained``: every assistant turn is trained.
    * ``no-refine``: each erroneous assistant turn and the feedback message after it are removed, so the
      trajectory reads as if the agent never erred.
    """
    out = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        if ablation == "trained":
            for m in msgs:
                if m["role"] == "assistant":
                    m["loss"] = True
        elif ablation == "no-refine":
            kept: list[dict[str, Any]] = []
            skip_feedback = False
            for m in msgs:
                if m["role"] == "assistant" and m.get("loss", True) is False:
                    skip_feedback = True
                    continue
                if skip_feedback and m["role"] == "user":
                    skip_feedback = False
                    continue
                skip_feedback = False
                kept.append(m)
            msgs = kept
        elif ablation != "masked":
            raise TrainingError(f"unknown ablation {ablation!r}; use masked, trained or no-refine")
        out.append({**r, "messages": msgs})
    return out
