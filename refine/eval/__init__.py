"""Evaluation, the last stage: play an agent on held-out environments, summarise it AgentBoard-style, report it.

`from refine.eval import evaluate, EvalConfig` is the public face (see `refine.eval.orchestration` for what a run
measures and records). The parts, one room each:

* `config`: `EvalConfig`, the episodes it asks for, environment checks and constructors;
* `episode`: the episode loop (one agent, one environment, one episode);
* `pool`: threads, the start barrier, the per-episode deadline, Ray glue;
* `orchestration`: `evaluate()`, the run store, resume, interruption and the run's health;
* `resume`: which stored config fields a rerun may add;
* `summary`: per-environment and overall metrics (`summarize`), the difference of two runs (`compare`);
* `stats`: Wilson intervals, seeded bootstraps, paired differences;
* `reference_agents`: the expert and random agents that bound an evaluation (`--agent expert|random`);
* `report`, `report_tables`: PNG plots and the self-contained HTML page of `refine report`.
"""

from __future__ import annotations

from refine.eval.orchestration import (
    DEFAULT_ENVS,
    SUITES,
    EvalConfig,
    EvalResult,
    check_config,
    compare,
    episode_specs,
    evaluate,
    run_episode,
    summarize,
)

__all__ = [
    "DEFAULT_ENVS",
    "SUITES",
    "EvalConfig",
    "EvalResult",
    "check_config",
    "compare",
    "episode_specs",
    "evaluate",
    "run_episode",
    "summarize",
]
