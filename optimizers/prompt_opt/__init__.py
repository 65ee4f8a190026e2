"""Prompt optimization of refinement programs: config, cost estimate, LM budget, the run, and its saved artifacts."""

from refine.optimizers.prompt_opt.artifacts import PredictorChange, diff_programs, load_optimized, save_optimized
from refine.optimizers.prompt_opt.budget import Budget, BudgetExhaustedError, Spend
from refine.optimizers.prompt_opt.config import METHODS, PRESETS, OptimizeConfig, load_examples, to_examples
from refine.optimizers.prompt_opt.estimate import CostEstimate, calls_per_run, estimate_cost
from refine.optimizers.prompt_opt.run import OptimizeResult, evaluate_program, optimize, resolve_lm

__all__ = [
    "METHODS",
    "PRESETS",
    "Budget",
    "BudgetExhaustedError",
    "CostEstimate",
    "OptimizeConfig",
    "OptimizeResult",
    "PredictorChange",
    "Spend",
    "calls_per_run",
    "diff_programs",
    "estimate_cost",
    "evaluate_program",
    "load_examples",
    "load_optimized",
    "optimize",
    "resolve_lm",
    "save_optimized",
    "to_examples",
]
