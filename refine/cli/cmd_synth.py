"""CLI commands of the synth area (being built; see the issue for this area)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
