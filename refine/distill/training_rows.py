"""Training rows for distillation: read any source through `refine.codec`, and apply the paper's ablations.

A row is ``{"id", "messages": [{"role", "content", "loss"?}], "provenance": {...}, "verdict_reasons": [...]}`` in the
shared chat format (`refine.formats`). Sources are whatever `refine.codec.load_source` reads: a run directory, any
export of `refine export`, the published AgentRefine / AgentGym / AgentInstruct / Agent-FLAN sets (a file, a folder
or ``hf:owner/name``), or an iterable of rows/trajectories in Python. Their ``loss`` flags are the masks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refine.codec import load_source, row_from_any, trajectory_to_row
from refine.errors import ExportError, TrainingError

__all__ = ["apply_ablation", "load_rows", "normalize_row", "trajectory_to_row"]

logger = logging.getLogger(__name__)


def normalize_row(row: Mapping[str, Any], where: str = "row") -> dict[str, Any]:
    """One object of any schema `refine.codec` knows -> a training row; raise `TrainingError` naming `where`."""
    try:
        return row_from_any(row, where)
    except ExportError as exc:
        raise TrainingError(str(exc)) from None


def load_rows(source: str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Load training rows from a run directory, an export, a published set (file, folder, ``hf:id``) or rows."""
    if not isinstance(source, str | Path):
        rows = [normalize_row(r, f"row {i}") for i, r in enumerate(source)]
        if not rows:
            raise TrainingError("no training rows were given")
        return rows
    try:
        rows, schema = load_source(source)
    except ExportError as exc:
        raise TrainingError(str(exc)) from None
    logger.info("read %d rows (%s schema) from %s", len(rows), schema, source)
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
