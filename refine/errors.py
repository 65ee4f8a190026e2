"""One exception hierarchy for dspy-refine: every error says what went wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EnvError",
    "ExportError",
    "GraphValidationError",
    "LMAuthError",
    "LMError",
    "LMOutputError",
    "RefineError",
    "RunFailedError",
    "RunStoreError",
    "TrainingError",
    "VerificationError",
]


class RefineError(Exception):
    """Base class of every error raised by dspy-refine.

    The message is written for the user: it names the node, field or file involved and says how to fix it.
    The CLI prints it as one red line and exits with code 1.
    """


class ConfigError(RefineError, ValueError):
    """A configuration value, CLI option or input file is invalid."""


class GraphValidationError(RefineError, ValueError):
    """A `ProgramGraph` is malformed (missing input, unbounded cycle, unreachable or duplicate node)."""


class LMError(RefineError, RuntimeError):
    """An LM could not be loaded or called (missing model files, unknown model string, engine failure).

    Not `dspy.LMError`: DSPy 3.4 has a class of that name too (the base of its provider, transport and rate-limit
    errors), and the two are unrelated classes. The name stays because users catch `refine.errors.LMError` today and
    it is always reached through `refine.errors`; code that must handle both catches both:
    ``except (refine.errors.LMError, dspy.LMError)``.
    """


class LMOutputError(RefineError, ValueError):
    """An LM answered, but its output could not be parsed into the requested structure.

    Synthesis records these as failures with their reason instead of crashing the run.
    """


class VerificationError(RefineError, ValueError):
    """A script or trajectory could not be verified at all (as opposed to verifying as rejected)."""


class RunStoreError(RefineError, RuntimeError):
    """A run directory is unusable: a config mismatch on resume, a corrupt manifest, a locked directory."""


class RunFailedError(RefineError, RuntimeError):
    """A run ended without doing its work: every item failed, or most failed on the same LM error.

    The manifest says `failed` with the reason; the CLI exits 1.
    """


class LMAuthError(LMError, RunFailedError):
    """The LM server refused the API key (HTTP 401/403): the whole run stops, as no further call can succeed.

    Not a transient error (no retry) and not a rejection of the item: the manifest says `failed` with this message,
    which names the variable (or `--api-key-env`) to fix; finished items are kept for `--resume`.
    """


class ExportError(RefineError, ValueError):
    """A run or dataset could not be exported to the requested format."""


class TrainingError(RefineError, RuntimeError):
    """Distillation could not start or failed (missing extra, bad data, unsupported model)."""


class EnvError(RefineError, RuntimeError):
    """A text environment could not be created, reset or stepped (missing extra, Java, game files)."""
