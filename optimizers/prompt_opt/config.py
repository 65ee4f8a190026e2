"""The configuration of an optimization run (one pydantic class for the CLI and the Python API), its presets, and
loading train/dev sets from JSONL.

Presets map to each DSPy optimizer's own budget knobs: `auto=light|medium|heavy` for MIPROv2 and GEPA, and the
number of demos/rounds for BootstrapFewShot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine.errors import ConfigError
from refine.lm.resolve import REMOTE_TIMEOUT_S

__all__ = ["BOOTSTRAP_PRESETS", "METHODS", "PRESETS", "OptimizeConfig", "load_examples", "to_examples"]

METHODS = ("bootstrap", "mipro", "gepa")
PRESETS = ("light", "medium", "heavy")

# BootstrapFewShot has no `auto`; these scale its demos and rounds like the other optimizers' presets.
BOOTSTRAP_PRESETS: dict[str, dict[str, int]] = {
    "light": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2, "max_rounds": 1},
    "medium": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4, "max_rounds": 1},
    "heavy": {"max_bootstrapped_demos": 8, "max_labeled_demos": 8, "max_rounds": 2},
}


class OptimizeConfig(BaseModel):
    """Settings of one `refine optimize` run. The CLI options and `refine.optimizers.optimize(...)` both build it.

    Example:
        >>> cfg = OptimizeConfig(program="self_refine", method="gepa", preset="light", max_calls=500)
        >>> cfg.method, cfg.max_calls
        ('gepa', 500)
    """

    model_config = ConfigDict(extra="forbid")

    program: str | None = Field(
        default=None,
        description="Program spec: a built-in name (agentrefine, interactive, self_refine, reflexion) or "
        "'package.module:attr'. Recorded in the output so `load_optimized` can rebuild the graph.",
    )
    program_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options for the program's build_graph(**options)."
    )
    optimizer_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the DSPy optimizer's constructor, e.g. {'max_metric_calls': 300} "
        "for GEPA (replaces the preset's auto budget) or {'max_bootstrapped_demos': 3} for bootstrap.",
    )
    method: Literal["bootstrap", "mipro", "gepa"] = Field(default="bootstrap", description="DSPy optimizer to use.")
    preset: Literal["light", "medium", "heavy"] = Field(default="light", description="Budget preset.")
    trainset: Path | None = Field(default=None, description="JSONL file of training examples (one object a line).")
    devset: Path | None = Field(default=None, description="JSONL file of held-out examples for before/after scores.")
    lm: str | None = Field(default=None, description="Task LM (model string, 'embedded', or 'py:module:factory').")
    reflection_lm: str | None = Field(
        default=None, description="LM for GEPA reflection / MIPRO instruction proposals (defaults to --lm)."
    )
    metric: str | None = Field(
        default=None,
        description="Metric: a built-in name (verifier, verdict, script, trajectory, episode, label_match) or "
        "'package.module:function'. Default: chosen from the program's outputs.",
    )
    max_calls: int | None = Field(default=None, ge=1, description="Hard limit on LM calls of the whole run.")
    max_tokens: int | None = Field(default=None, ge=1, description="Hard limit on LM tokens of the whole run.")
    timeout: float | None = Field(
        default=REMOTE_TIMEOUT_S,
        gt=0,
        description="Seconds one call to a remote LM (--lm, --reflection-lm) may take (in-process models: unused).",
    )
    num_threads: int = Field(default=1, ge=1, description="Threads for evaluation and optimization.")
    seed: int = Field(default=0, description="Seed of the optimizers' sampling.")
    out: Path | None = Field(default=None, description="Output directory: program.json, report.json, report.md.")
    log_dir: Path | None = Field(
        default=None, description="GEPA checkpoint directory (default OUT/gepa); rerunning with it resumes."
    )
    trust_program: list[str] = Field(
        default_factory=list,
        description="'module:attr' programs a saved program directory may name (you trust them); built-ins always.",
    )
    unsafe_pickle_checkpoint: bool = Field(
        default=False,
        description="Resume from a GEPA checkpoint (gepa_state.bin) even when it holds Python objects, not only "
        "data: unpickling it runs any code it names. Only for checkpoints you wrote yourself.",
    )
    mlflow: bool | None = Field(
        default=None, description="Log to MLflow via mlflow.dspy.autolog() (None: when mlflow is installed)."
    )
    dry_run: bool = Field(default=False, description="Only print the cost estimate.")

    @field_validator("program_options", "optimizer_kwargs")
    @classmethod
    def _json_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(v)
        except TypeError as exc:
            raise ValueError(
                f"program_options must be JSON-serialisable (they are saved with the result): {exc}"
            ) from exc
        return v


def to_examples(rows: Iterable[Any], input_keys: Sequence[str], source: str = "dataset") -> list[dspy.Example]:
    """Turn dicts (or Examples) into `dspy.Example`s whose inputs are the program's graph inputs present in the row.

    Raises:
        ConfigError: a row is not an object or has none of the program's inputs.
    """
    out = []
    for i, row in enumerate(rows, 1):
        if isinstance(row, dspy.Example):
            row = row.toDict()
        if not isinstance(row, dict):
            raise ConfigError(f"{source}: row {i} is a {type(row).__name__}; each row must be a JSON object.")
        keys = [k for k in input_keys if k in row]
        if not keys:
            raise ConfigError(
                f"{source}: row {i} has fields {sorted(row)} but none of the program's inputs {list(input_keys)}. "
                f'Write rows like {{"{input_keys[0] if input_keys else "input"}": ...}}.'
            )
        out.append(dspy.Example(**row).with_inputs(*keys))
    return out


def load_examples(path: Path | str, input_keys: Sequence[str]) -> list[dspy.Example]:
    """Read a JSONL file (blank lines and `#` comments skipped) into examples for a program with `input_keys`.

    Raises:
        ConfigError: the file is missing, empty, or a line is not a JSON object.
    """
    p = Path(path)
    if not p.exists() or p.is_dir():  # exists(): pipes such as <(...) are not regular files
        raise ConfigError(f"Dataset file {str(p)!r} does not exist. Pass a JSONL file with one example per line.")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{n}: not valid JSON ({exc.msg}). Each line must be one JSON object.") from exc
    if not rows:
        raise ConfigError(f"Dataset file {str(p)!r} has no examples.")
    return to_examples(rows, input_keys, source=str(p))
