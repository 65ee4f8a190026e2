"""The command groups of the CLI, one module per area (each module imports only typer/rich at import time)."""

from __future__ import annotations

from refine.cli import (
    cmd_distill,
    cmd_eval,
    cmd_export,
    cmd_graph,
    cmd_lm,
    cmd_optimize,
    cmd_quickstart,
    cmd_synth,
)

REGISTRARS = [
    cmd_lm.register,
    cmd_graph.register,
    cmd_synth.register,
    cmd_export.register,
    cmd_optimize.register,
    cmd_distill.register,
    cmd_eval.register,
    cmd_quickstart.register,
]
