"""Export refinement data to the format of each trainer, keeping the erroneous-turn mask where the trainer can.

Rows come from `refine.codec` (a run directory, or any published schema it reads); each format writer here puts them
where its trainer looks for the mask, and `MASK_NOTES` says, per format, what is masked and which setting keeps it.
Every export is written to a temporary path beside ``out`` and renamed into place, so a killed export never leaves a
half-made file and never destroys the previous good one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from refine.codec import (
    TRL_TEMPLATES,
    load_source,
    messages_to_agentgym,
    messages_to_llamafactory,
    messages_to_sharegpt,
    provenance_to_hf,
    trajectory_to_messages,
    trajectory_to_row,
)
from refine.data import Provenance
from refine.errors import ExportError

__all__ = [
    "FORMATS",
    "MASK_NOTES",
    "export_rows",
    "export_run",
    "load_export",
    "provenance_of",
    "trajectory_to_messages",
    "trajectory_to_row",
]

Format = Literal["messages", "sharegpt", "trl", "llamafactory", "agentgym", "agentrefine", "hf"]
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "trl", "llamafactory", "agentgym", "agentrefine", "hf")
_DIR_FORMATS = ("trl", "llamafactory", "hf")
_MARKER = ".refine-export"

MASK_NOTES: dict[str, str] = {
    "messages": "`loss: false` on erroneous assistant turns; kept by `refine distill`. TRL ignores the key: use "
    "--format trl for TRL.",
    "sharegpt": "`loss` on every turn (false on erroneous gpt turns); kept by `refine distill` and AgentTuning-style "
    "trainers. Roles are human/gpt: TRL needs --format trl; LLaMA-Factory 0.9.x's sharegpt loader drops `loss` "
    "(every gpt turn trained): use --format llamafactory.",
    "trl": "`{% generation %}` blocks cover exactly the trained assistant turns; kept by TRL with "
    "SFTConfig(assistant_only_loss=True, chat_template_path='OUT/chat_template.jinja').",
    "llamafactory": "`loss_weight: 0.0` on masked turns (LLaMA-Factory v1 native messages); kept by "
    "llamafactory>=0.9.5 with USE_V1=1 and `dataset: OUT/dataset_info.yaml`.",
    "agentgym": "system folded into the first human turn; `loss: false` on erroneous gpt turns, null on human turns; "
    "kept by the AgentGym/AgentTuning trainers.",
    "agentrefine": "the published AgentRefine schema (`id` + `conversations` of from/loss/value, no system turn: it is "
    "folded into the first human turn); `loss: false` on erroneous gpt turns; kept by `refine distill` and the "
    "AgentTuning-style trainers the release was made for.",
    "hf": "`messages[].loss` false on erroneous turns; kept by `refine distill OUT`. datasets.load_from_disk(OUT) "
    "loads it; LLaMA-Factory reads the .arrow file (entry in llamafactory_dataset_info.json) but trains every "
    "assistant turn.",
}


# -------------------------------------------------------------------------------------------- safe writing
def _check_out(out: Path, source: Path | None) -> None:
    resolved = out.resolve()
    for parent in (resolved, *resolved.parents):
        if (parent / "manifest.json").is_file():
            raise ExportError(
                f"--out {out} is inside the run directory {parent}; write exports outside it "
                f"(e.g. --out {parent.parent / (parent.name + '-export')}), so the run's own records stay intact"
            )
    if source is not None and source.exists() and source.resolve() == resolved:
        raise ExportError(f"--out {out} is the source itself; choose another path")
    if out.is_dir() and not (out / _MARKER).exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not an earlier export; choose a new --out (nothing was written)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _commit(tmp: Path, out: Path) -> None:
    """Rename a finished temporary file or folder onto ``out`` (the old export stays until this moment)."""
    if tmp.is_dir():
        (tmp / _MARKER).write_text("written by refine export\n", encoding="utf-8")
        if not out.exists():
            os.replace(tmp, out)
        elif _exchange(tmp, out):  # one atomic swap: `tmp` now holds the old export
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            # Two renames: a kill between them leaves the old export in `.OUT.old-*/x`, restored by the next run.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _clean_stale(out: Path) -> None:
    """Remove what a killed export left beside `out` (hidden temporaries only: they never block a rerun), first
    putting back an old export that a kill caught between the two renames of `_commit`."""
    for p in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not out.exists() and (p / "x" / _MARKER).exists():
            os.replace(p / "x", out)
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    from refine.store import scrub_secrets

    with open(path, "w", encoding="utf-8") as f:
        f.write(scrub_secrets(text))
        f.flush()
        os.fsync(f.fileno())


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------ writers
def _sharegpt_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "conversations": messages_to_sharegpt(r["messages"]),
            "provenance": r["provenance"],
            "verdict_reasons": r["verdict_reasons"],
        }
        for r in rows
    ]


def _write_trl(rows: Sequence[dict[str, Any]], tmp: Path, template: str) -> None:
    if template not in TRL_TEMPLATES:
        raise ExportError(f"--template {template!r} is not one of {', '.join(TRL_TEMPLATES)}")
    _write_text(tmp / "train.jsonl", _jsonl(rows))
    _write_text(tmp / "chat_template.jinja", TRL_TEMPLATES[template])


def _write_llamafactory(rows: Sequence[dict[str, Any]], tmp: Path, out: Path) -> None:
    lf = [{"id": r["id"], "messages": messages_to_llamafactory(r["messages"])} for r in rows]
    _write_text(tmp / "train.jsonl", _jsonl(lf))
    data = (out / "train.jsonl").resolve()
    _write_text(tmp / "dataset_info.yaml", f"agentrefine:\n  path: {json.dumps(str(data))}\n  source: local\n")


def _write_hf(rows: Sequence[dict[str, Any]], tmp: Path, out: Path, card: str) -> None:
    try:
        import datasets
    except ImportError as exc:
        raise ExportError("The hf format needs `datasets`: pip install 'dspy-refine[train]'.") from exc
    hf_rows = [
        {
            "id": r["id"],
            "messages": [{"role": m["role"], "content": m["content"], "loss": m.get("loss")} for m in r["messages"]],
            "provenance": provenance_to_hf(r["provenance"]),
            "verdict_reasons": list(r["verdict_reasons"]),
        }
        for r in rows
    ]
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_list(hf_rows).save_to_disk(str(tmp), num_shards=1)
    finally:
        if bars:
            datasets.enable_progress_bars()
    arrow = sorted(p.name for p in tmp.glob("*.arrow"))
    entry = {
        "agentrefine_hf": {
            "file_name": str((out / arrow[0]).resolve()),
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }
    _write_text(tmp / "llamafactory_dataset_info.json", json.dumps(entry, indent=2) + "\n")
    _write_text(tmp / "README.md", card)


def export_rows(
    rows: Sequence[dict[str, Any]],
    fmt: Format | str,
    out: str | Path,
    *,
    template: str = "smollm2",
    card: str = "",
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Write codec rows in format ``fmt`` to ``out`` (atomically) and return the counts.

    Args:
        rows: ``{"id", "messages", "provenance", "verdict_reasons"}`` rows (`refine.codec`).
        fmt: one of `FORMATS`: ``messages`` (.jsonl), ``sharegpt`` / ``agentgym`` / ``agentrefine`` (.json),
            ``trl`` / ``llamafactory`` / ``hf`` (folders).
        out: the output file or folder; never inside a run directory.
        template: with ``trl``, the model family of the mask-marked chat template (`refine.codec.TRL_TEMPLATES`).
        card: the dataset card written as README.md next to the hf data.
        source: the input path, refused as ``out``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if not rows:
        raise ExportError("nothing to export: no rows")
    out_path = Path(out)
    _check_out(out_path, Path(source) if source is not None and not str(source).startswith("hf:") else None)
    if fmt in _DIR_FORMATS and out_path.is_file():
        raise ExportError(f"--out {out_path} is a file; --format {fmt} writes a folder")
    if fmt not in _DIR_FORMATS and out_path.is_dir():
        raise ExportError(f"--out {out_path} is a folder; --format {fmt} writes one file (e.g. {out_path}/data.json)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_path.parent}: {exc.strerror}") from None
    _clean_stale(out_path)
    prefix = f".{out_path.name}.tmp-"
    try:
        if fmt in _DIR_FORMATS:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out_path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=out_path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise ExportError(f"cannot write to {out_path.parent}: {exc.strerror}") from None
    try:
        if fmt == "messages":
            _write_text(tmp, _jsonl(rows))
        elif fmt == "sharegpt":
            _write_text(tmp, json.dumps(_sharegpt_rows(rows), ensure_ascii=False, indent=1) + "\n")
        elif fmt in ("agentgym", "agentrefine"):
            key = "item_id" if fmt == "agentgym" else "id"
            data = [{key: r["id"], "conversations": messages_to_agentgym(r["messages"])} for r in rows]
            _write_text(tmp, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        elif fmt == "trl":
            _write_trl(rows, tmp, template)
        elif fmt == "llamafactory":
            _write_llamafactory(rows, tmp, out_path)
        else:
            _write_hf(rows, tmp, out_path, card)
        _commit(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    assistant = [m for r in rows for m in r["messages"] if m["role"] == "assistant"]
    return {
        "rows": len(rows),
        "assistant_turns": len(assistant),
        "masked_turns": sum(1 for m in assistant if m.get("loss") is False),
        "format": fmt,
        "out": str(out_path),
    }


def _dataset_card(source: str, rows: Sequence[dict[str, Any]], manifest: dict[str, Any] | None) -> str:
    from refine.store import redact

    assistant = [m for r in rows for m in r["messages"] if m["role"] == "assistant"]
    masked = sum(1 for m in assistant if m.get("loss") is False)
    lines = [
        "---",
        "tags: [agentrefine, refinement-tuning, dspy-refine, synthetic]",
        "task_categories: [text-generation]",
        "---",
        "# AgentRefine refinement-tuning data",
        "",
        f"Exported by `refine export --format hf` from `{Path(source).name}` (dspy-refine).",
        "Each row is one verified trajectory in the shared chat format: system = instructions, environment and",
        "actions; user = observation; assistant = `Thought: ...\\nAction: ...`. Assistant turns that the",
        "environment flagged as errors carry `loss: false` (kept in context, excluded from the loss).",
        "",
        "## Counts",
        "",
        f"- rows (accepted trajectories): {len(rows)}",
        f"- assistant turns: {len(assistant)} ({masked} masked, {len(assistant) - masked} trained)",
    ]
    if manifest is not None:
        totals = manifest.get("totals") or {}
        config = json.dumps(redact(manifest.get("config", {})), indent=2, sort_keys=True)
        lines += [
            f"- rejected trajectories in the run: {totals.get('rejected', 'n/a')}",
            f"- program hash: `{manifest.get('program_hash', '')}`",
            f"- package versions: `{json.dumps(manifest.get('versions', {}), sort_keys=True)}`",
            "",
            "## Run config",
            "",
            "```json",
            config,
            "```",
        ]
    return "\n".join([*lines, ""])


def export_run(run_dir: str | Path, fmt: Format | str, out: str | Path, *, template: str = "smollm2") -> dict[str, Any]:
    """Export the accepted trajectories of a run directory, or any source `refine.codec.load_source` reads.

    Args:
        run_dir: a run directory written by `refine synth`, an export, a published set (file/folder) or ``hf:id``.
        fmt: one of `FORMATS`.
        out: the output file (messages/sharegpt/agentgym/agentrefine) or folder (trl/llamafactory/hf).
        template: the chat-template family of the ``trl`` export.

    Returns:
        Counts: ``{"rows", "assistant_turns", "masked_turns", "format", "out", "schema"}``.

    Raises:
        ExportError: unknown format, nothing to export, an ``out`` inside a run, or an unwritable output.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    rows, schema = load_source(run_dir)
    manifest = None
    if schema == "record":
        from refine.store import RunStore

        manifest = RunStore.open_existing(run_dir).manifest
    card = _dataset_card(str(run_dir), rows, manifest) if fmt == "hf" else ""
    counts = export_rows(rows, fmt, out, template=template, card=card, source=run_dir)
    return {**counts, "schema": schema}


def load_export(path: str | Path) -> list[dict[str, Any]]:
    """Read an export (any format) back as codec rows; an empty or half-written export is an `ExportError`."""
    p = Path(path)
    if p.is_dir() and (p / "train.jsonl").is_file():
        p = p / "train.jsonl"
    return load_source(p)[0]


def provenance_of(row: dict[str, Any]) -> Provenance:
    """The `Provenance` model of an exported row."""
    return Provenance.model_validate(row["provenance"])
