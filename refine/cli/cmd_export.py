"""`refine export SOURCE --format F --out PATH`: refinement data in the format of each trainer, masks kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export", "register"]


def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A run directory, an export, a published set (AgentRefine, AgentGym, AgentInstruct, Agent-FLAN: "
            "a .json/.jsonl/.parquet file or a folder) or hf:owner/name."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file (messages, sharegpt, agentgym, agentrefine) or folder.")
    ],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="messages | sharegpt | trl | llamafactory | agentgym | agentrefine | hf."),
    ] = "messages",
    template: Annotated[
        str,
        typer.Option(
            "--template", help="With --format trl: the chat-template family (smollm2, qwen2.5, chatml, llama3, ...)."
        ),
    ] = "smollm2",
) -> None:
    """Export refinement data (provenance on every row; the erroneous-turn mask kept where the trainer can)."""
    from refine.export import MASK_NOTES, export_run

    counts = export_run(source, fmt, out, template=template)
    typer.echo(
        f"Exported {counts['rows']} trajectories ({counts['assistant_turns']} assistant turns, "
        f"{counts['masked_turns']} masked) from {counts['schema']} data as {counts['format']} to {counts['out']}"
    )
    typer.echo(f"Mask: {MASK_NOTES[counts['format']].replace('OUT', str(out))}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("export")(export)
