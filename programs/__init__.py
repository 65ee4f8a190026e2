"""Composed refinement programs (importable as `refine.programs`); each module has `build_graph(**options)`."""

from refine.programs.agentrefine import AgentRefinePipeline
from refine.programs.interactive import InteractiveRefine

__all__ = [
    "AgentRefinePipeline",
    "InteractiveRefine",
]
