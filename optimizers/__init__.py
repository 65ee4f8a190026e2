"""Optimizers of refinement programs: verifier metrics, prompt optimization runs (BootstrapFewShot, MIPROv2, GEPA
under an LM budget) and loading their results."""

from refine.optimizers.finetune import RefinementFinetune
from refine.optimizers.metrics import (
    METRICS,
    as_feedback_metric,
    default_metric_for,
    episode_metric,
    label_match_metric,
    resolve_metric,
    script_metric,
    trajectory_metric,
    verdict_metric,
)
from refine.optimizers.prompt_opt import (
    Budget,
    BudgetExhaustedError,
    CostEstimate,
    OptimizeConfig,
    OptimizeResult,
    estimate_cost,
    load_optimized,
    optimize,
)

__all__ = [
    "METRICS",
    "Budget",
    "BudgetExhaustedError",
    "CostEstimate",
    "OptimizeConfig",
    "OptimizeResult",
    "RefinementFinetune",
    "as_feedback_metric",
    "default_metric_for",
    "episode_metric",
    "estimate_cost",
    "label_match_metric",
    "load_optimized",
    "optimize",
    "resolve_metric",
    "script_metric",
    "trajectory_metric",
    "verdict_metric",
]
