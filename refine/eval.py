"""Held-out evaluation: run an agent on text environments in parallel episodes and summarise it AgentBoard-style.

`evaluate(agent, EvalConfig(...), out=DIR)` plays `episodes` episodes per environment (and, with `perturb=True`, the
same episodes again with reworded actions), at most `max_steps` steps each, in `workers` threads. Threads matter
because the embedded engine batches concurrent LM calls into one forward pass, so parallel episodes cost little
more than one. Each finished episode is appended to `episodes.jsonl` of a `RunStore` (resumable: a rerun with
`resume=True` plays only missing episodes), and `summary.json` holds, per environment and overall:

* success rate, progress rate (mean over episodes of the best progress reached; AgentBoard's definition),
* invalid-action rate (invalid steps / steps), repeated-action ("stuck") rate (steps that repeat the previous action
  and get the same observation back), mean steps, prompt/completion tokens,
* held-in vs held-out groups (environments the agent was trained on vs not), and, with perturbation, the drop from
  the unperturbed success and progress rates.

Every rate carries its count `n` and a 95% interval (`*_ci`: Wilson for success and per-step rates, a seeded bootstrap
for progress means and for macro averages over environments; see `refine.stats`); cells with fewer than 20 episodes
are flagged (`small_n`) and listed in `warnings`. `settings` records the suite, step bound, episodes, seeds and
decoding, so a number can be read with what produced it. `compare(a, b)` gives the difference of two runs with its
interval, paired by episode (environment, task, seed) when both runs played the same episodes.

The variant key "base" in summaries is the original (unperturbed) action wording, "perturbed" the reworded one;
reports and the CLI print them as "original" and "reworded", so "base" is never confused with a base model.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from refine.errors import ConfigError, RefineError
from refine.eval_config import (
    DEFAULT_ENVS,
    SUITES,
    EvalConfig,
    EvalResult,
    check_config,
    default_factory,
    episode_specs,
)
from refine.eval_episode import run_episode
from refine.eval_metrics import compare, summarize
from refine.eval_pool import EnvPool, StartGate, play_on_ray

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

logger = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def evaluate(
    agent: Any,
    config: EvalConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    env_factory: Callable[[str, bool], Any] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    start_together_s: float = 60.0,
) -> EvalResult:
    """Evaluate `agent` (a `ChatAgent`, `ProgramAgent` or anything with `start(...)->session.act(obs)`).

    Args:
        agent: The agent.
        config: What to run.
        out: Run directory (a `RunStore`); None keeps everything in memory.
        resume: Continue the run in `out`, playing only the episodes it lacks.
        env_factory: `(name, perturbed) -> TextEnv`; default `refine.envs.make_env` with `config.env_options`.
        on_episode: Called with each finished episode record (progress display; with Ray: key and success only).
        executor: "local" (threads, default) or "ray" (episodes as Ray tasks through `refine.executor`; needs `out`,
            and `agent` must be a zero-argument factory such as `functools.partial(resolve_agent, spec, lm)`, which
            each worker process calls once: LMs with in-process engines cannot be shipped to workers).
        ray_address: The Ray cluster to join with executor="ray" (default: start a local instance).
        start_together_s: With local threads, the first episode of each worker waits until all of them have reset
            their environments (at most this many seconds; 0: no waiting), so that an in-process LM batches the
            first turn of every episode in one forward pass.

    Returns:
        The summary and all episode records (including those of an earlier, resumed run).
    """
    if not config.envs:
        raise ConfigError("No environments to evaluate on; pass --envs babyai,scienceworld,pddl,textworld.")
    unknown = set(config.held_in) - set(config.envs)
    if unknown:
        raise ConfigError(f"--held-in names environments that are not evaluated: {sorted(unknown)}; see --envs.")
    if env_factory is None:
        check_config(config, agent if hasattr(agent, "start_with_env") else None)
    from refine.executor import ExecutorConfig

    ex_cfg = ExecutorConfig.from_options(executor, workers=config.workers, ray_address=ray_address)
    if ex_cfg.executor == "ray":
        if out is None:
            raise ConfigError("--executor ray writes episodes through a run directory; pass --out DIR.")
        if hasattr(agent, "start") or not callable(agent):
            raise ConfigError(
                "With --executor ray pass the agent as a zero-argument factory, e.g. "
                "functools.partial(resolve_agent, spec, lm): each Ray worker builds its own agent and LM."
            )
    store = None
    if out is not None:
        from refine.store import RunStore

        store = RunStore(out, config=config.model_dump(), resume=resume)
    specs = episode_specs(config)
    todo = [s for s in specs if store is None or not store.has(s["key"])]
    pool = EnvPool(env_factory or default_factory(config, agent))
    held = set(config.held_in)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    first_wave = {s["key"] for s in todo[: config.workers]}  # the tasks the worker threads pick up first
    gate = StartGate(len(first_wave), start_together_s)

    def play(spec: dict[str, Any]) -> dict[str, Any]:
        key = spec["key"]
        ready = functools.partial(gate.arrive, key) if key in first_wave else None
        try:
            env = pool.acquire(spec["env"], spec["variant"])
            try:
                rec = run_episode(agent, env, spec, config.max_steps, ready=ready)
            finally:
                pool.release(spec["env"], spec["variant"], env)
        except BaseException:
            gate.abort()  # this run is failing: nobody waits for the episode that will never arrive
            raise
        if ready is not None:
            ready()  # an episode that ended before acting (reset failed, ...) still arrives
        rec["held_in"] = spec["env"] in held
        rec["model"] = config.model or str(getattr(agent, "model", "") or "")
        if store is not None:
            store.append("episodes", rec, key=spec["key"])
        with lock:
            records.append({"key": spec["key"], **rec})
        if on_episode is not None:
            on_episode(rec)
        return rec

    started = time.perf_counter()
    try:
        if ex_cfg.executor == "ray":
            play_on_ray(agent, config, store, todo, env_factory, on_episode, ex_cfg)
        else:
            with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="refine-eval") as ex:
                # Each episode runs in a copy of the caller's context, so dspy.context(lm=...) settings reach workers.
                futures = [ex.submit(contextvars.copy_context().run, play, s) for s in todo]
                for fut in as_completed(futures):
                    fut.result()
    except RefineError:
        raise
    finally:
        pool.close()
    wall = time.perf_counter() - started
    all_records = list(store.records("episodes")) if store is not None else records
    summary = summarize(all_records, config.held_in, settings=config.settings())
    summary["run"] = {
        "episodes_played": len(todo),
        "wall_s": round(wall, 3),
        "episodes_per_min": round(60 * len(todo) / wall, 3) if wall > 0 and todo else None,
        "workers": config.workers,
        "executor": ex_cfg.executor,
        "agent": config.agent,
        "model": config.model or str(getattr(agent, "model", "") or ""),
    }
    if store is not None:
        _write_json(store.path / "summary.json", summary)
        store.finish(summary={k: summary[k] for k in ("overall", "held_in", "held_out") if k in summary})
        store.close()
    return EvalResult(summary=summary, records=all_records, out=str(store.path) if store is not None else None)
