"""The `refine` command line (typer + rich). Heavy imports happen inside commands."""

from refine.cli.app import app, main

__all__ = ["app", "main"]
