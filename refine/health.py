"""Whether a finished run actually worked: a run whose items all failed, or that mostly failed on one LM error, is
`failed` (manifest status and a non-zero exit code), with the error as the reason, instead of "finished, 0 accepted".

Example:
    >>> recs = [{"key": str(i), "error": "LMError: no API key"} for i in range(3)]
    >>> failure_reason(recs)
    'all 3 items failed: LMError: no API key'
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FAILED_SHARE", "failure_reason", "item_error", "mark_failed"]

#: A run fails when more than this share of its items failed with the same LM error.
FAILED_SHARE = 0.5

_CONTENT_ERRORS = ("AdapterParseError", "LMOutputError", "parse")


def item_error(record: Mapping[str, Any]) -> str | None:
    """The error that ended an item (its own `error`, else the first failed attempt's), shortened to one line."""
    error = record.get("error")
    if not error:
        for attempt in record.get("attempts") or []:
            if isinstance(attempt, Mapping) and attempt.get("error"):
                error = attempt["error"]
                break
    if not error:
        return None
    line = " ".join(str(error).split())
    return line[:300]


def failure_reason(records: Iterable[Mapping[str, Any]], share: float = FAILED_SHARE) -> str | None:
    """Why the run counts as failed, or None.

    Args:
        records: one record per item (accepted and rejected records, or episodes); failed items that wrote no record
            may be passed as `{"key": ..., "error": ...}`.
        share: more than this share of items failing with one LM error (not a parse failure) fails the run.
    """
    items = list(records)
    if not items:
        return None
    errors = [item_error(r) for r in items]
    accepted = sum(1 for r in items if r.get("accepted") or r.get("success"))
    failed = [e for e in errors if e]
    if failed and len(failed) == len(items) and not accepted:
        top, _ = Counter(failed).most_common(1)[0]
        return f"all {len(items)} items failed: {top}"
    lm_errors = [e for e in failed if not any(c in e for c in _CONTENT_ERRORS)]
    if lm_errors:
        top, count = Counter(lm_errors).most_common(1)[0]
        if count > share * len(items):
            return f"{count} of {len(items)} items failed with the same LM error: {top}"
    return None


def mark_failed(run_dir: str | os.PathLike[str], reason: str) -> None:
    """Set the run's manifest status to `failed` with the reason (after the run's own store was closed)."""
    from refine.store import RunStore

    if (Path(run_dir) / "manifest.json").exists():
        RunStore.open_existing(run_dir).update_manifest(status="failed", failure=reason)
