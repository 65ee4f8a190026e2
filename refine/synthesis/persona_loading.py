"""Personas that seed script generation: the built-in set shipped with the package, or a user's JSONL/CSV/text file.

Persona Hub rows have a `persona` column; other files may use `text`, or the first column/string field. A text file
(any other extension) holds one persona per line.
"""

from __future__ import annotations

import csv
import json
import re
from importlib import resources
from pathlib import Path

from refine.errors import ConfigError

__all__ = ["BUILTIN", "builtin_personas", "load_personas"]

BUILTIN = "builtin"
_KEYS = ("persona", "text")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A header cell: one identifier-like word (`name`, `age`, `user_id`). A first row made only of these, with no
# 'persona'/'text' column, is a header naming other columns, not a persona.
_HEADER_CELL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,40}$")


def builtin_personas() -> list[str]:
    """The built-in persona set (about 30 varied occupations and situations, written for this project)."""
    text = resources.files("refine").joinpath("assets/personas.jsonl").read_text(encoding="utf-8")
    return _from_jsonl(text.splitlines(), "the built-in persona set")


def _pick(row: dict[str, object], where: str) -> str | None:
    for k in _KEYS:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    for v in row.values():
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _from_jsonl(lines: list[str], where: str) -> list[str]:
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where}, line {i}: not valid JSON ({exc.msg}); write one JSON object per line."
            ) from None
        if isinstance(row, str):
            value: str | None = row.strip() or None
        elif isinstance(row, dict):
            value = _pick(row, where)
        else:
            value = None
        if value is None:
            raise ConfigError(f"{where}, line {i}: no persona text; give each row a 'persona' (or 'text') string.")
        if _SURROGATE.search(value):
            raise ConfigError(
                f"{where}, line {i}: the persona holds a lone surrogate escape (e.g. \\ud800), which is no character; "
                "fix or drop that escape."
            )
        out.append(value)
    return out


def _from_csv(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = [r for r in reader if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(k) for k in _KEYS if k in header), None)
    cells = [c.strip() for c in rows[0]]
    if col is None and cells and all(_HEADER_CELL.match(c) for c in cells):
        raise ConfigError(
            f"Persona file {path} has no 'persona' (or 'text') column (its header: {', '.join(cells)}). Name "
            "the column that holds the persona text 'persona', or give a text file with one persona per line."
        )
    body = rows[1:] if col is not None else rows
    col = col or 0
    return [r[col].strip() for r in body if len(r) > col and r[col].strip()]


def load_personas(spec: str | Path = BUILTIN) -> list[str]:
    """Load personas from `builtin` or a file (.jsonl/.json lines, .csv, or plain text with one per line).

    Raises:
        ConfigError: the file is missing, malformed or holds no persona.

    Example:
        >>> len(load_personas("builtin")) >= 30
        True
    """
    if str(spec) == BUILTIN:
        return builtin_personas()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"Persona file {path} does not exist. Pass --personas builtin or a JSONL/CSV/text file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            personas = _from_jsonl(path.read_text(encoding="utf-8").splitlines(), str(path))
        elif suffix == ".csv":
            personas = _from_csv(path)
        else:
            personas = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Persona file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read the persona file {path} ({exc.strerror or exc}).") from None
    if not personas:
        raise ConfigError(f"Persona file {path} holds no persona; add one per line/row (a 'persona' column for CSV).")
    return personas
