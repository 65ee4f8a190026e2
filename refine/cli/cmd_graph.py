"""`refine graph show PROGRAM`: render a program's graph as Mermaid text."""

from __future__ import annotations

import typer

graph_app = typer.Typer(help="Inspect refinement programs (ProgramGraphs).", no_args_is_help=True)


@graph_app.command("show")
def show(
    program: str = typer.Argument(
        ..., help="A built-in program name (e.g. agentrefine), 'module:attr' returning a ProgramGraph, or a saved dir."
    ),
    validate: bool = typer.Option(
        True, "--validate/--no-validate", help="Check the graph first (missing inputs, unbounded loops, ...)."
    ),
) -> None:
    """Print the program's graph as Mermaid flowchart text."""
    from refine.programs_registry import load_graph

    graph = load_graph(program)
    if validate:
        graph.validate()
    typer.echo(graph.to_mermaid(), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(graph_app, name="graph")
