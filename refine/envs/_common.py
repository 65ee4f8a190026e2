"""Helpers shared by the real-environment adapters: lazy imports of the `envs` extra and action-text normalisation."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from refine.errors import EnvError

__all__ = ["EXTRA_HINT", "normalize_action", "require"]

EXTRA_HINT = "pip install 'dspy-refine[envs]'"

_SPACES = re.compile(r"\s+")


def require(module: str, env: str, package: str | None = None) -> ModuleType:
    """Import `module` or raise an EnvError that says which package of the `envs` extra to install.

    Example:
        >>> require("json", "toy").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module.split(".")[0]
        raise EnvError(
            f"The {env!r} environment needs the package {pkg!r}, which is not installed ({exc}). "
            f"Install the environments extra: {EXTRA_HINT} (or `pip install {pkg}`)."
        ) from exc


def normalize_action(action: str) -> str:
    """Lower-case, strip surrounding quotes/punctuation and collapse whitespace, so 'Move Forward.' == 'move forward'.

    Example:
        >>> normalize_action("  'Pick  Up'. ")
        'pick up'
    """
    a = _SPACES.sub(" ", action.strip().lower())
    return a.strip(" .!'\"`")
