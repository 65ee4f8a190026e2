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
for progress means and for macro averages over environments; see `refine.eval.stats`); cells with fewer than 20
episodes are flagged (`small_n`) and listed in `warnings`. `settings` records the suite, step bound, episodes, seeds and
decoding, so a number can be read with what produced it. `compare(a, b)` gives the difference of two runs with its
interval, paired by episode (environment, task, seed) when both runs played the same episodes.

The variant key "base" in summaries is the original (unperturbed) action wording, "perturbed" the reworded one;
reports and the CLI print them as "original" and "reworded", so "base" is never confused with a base model.

Episodes that produced no measurement (the LM call failed on several turns in a row, or the episode ran past
`episode_timeout`) are not counted: they go to `errors.jsonl` and stay pending, so `--resume` plays them again, and
the manifest says `incomplete`. A run in which every episode failed, or more than half failed with the same LM error,
ends `failed` with the reason (`refine.health`, the rule of `refine synth`). Ctrl-C/SIGTERM stops a run cleanly: no
new episode starts, running ones are abandoned without writing anything, the manifest says `interrupted`.

The code lives in sibling modules of `refine.eval`: `config` (the config, its episodes and environment checks),
`episode` (the episode loop), `summary` (summaries and comparisons), `pool` (threads, deadline, Ray glue).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from refine import interrupt
from refine.errors import ConfigError, RunFailedError
from refine.eval.config import (
    DEFAULT_ENVS,
    SUITES,
    EvalConfig,
    EvalResult,
    check_config,
    default_factory,
    episode_specs,
)
from refine.eval.episode import run_episode
from refine.eval.pool import EnvPool, StartGate, play_local, play_on_ray, play_with_deadline, timeout_error
from refine.eval.summary import compare, summarize
from refine.lm.usage import CURRENT_COUNTER, CallCounter, install_retry_hook

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


def _pending_errors(store: Any, specs: list[dict[str, Any]], failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest error of each episode that has no record: `{"key", "error"}` (a run store's, or this run's)."""
    latest: dict[str, str] = {}
    if store is not None:
        for rec in store.records("errors"):
            if rec.get("item"):
                latest[rec["item"]] = str(rec.get("error") or "error")
    for f in failures:
        latest[f["key"]] = f["error"]
    return [
        {"key": s["key"], "error": latest[s["key"]]}
        for s in specs
        if s["key"] in latest and (store is None or not store.has(s["key"]))
    ]


def _failure(records: Sequence[Mapping[str, Any]], pending: list[dict[str, Any]]) -> str | None:
    """Why the run counts as failed (every episode failed, or most with one LM error), or None."""
    from refine.health import failure_reason

    reason = failure_reason([*records, *pending])
    return reason.replace(" items ", " episodes ") if reason else None


def evaluate(
    agent: Any,
    config: EvalConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    env_factory: Callable[[str, bool], Any] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    start_together_s: float = 60.0,
) -> EvalResult:
    """Evaluate `agent` (a `ChatAgent`, `ProgramAgent` or anything with `start(...)->session.act(obs)`).

    Args:
        agent: The agent.
        config: What to run.
        out: Run directory (a `RunStore`); None keeps everything in memory.
        resume: Continue the run in `out`, playing only the episodes it lacks (and those left pending).
        env_factory: `(name, perturbed) -> TextEnv`; default `refine.envs.make_env` with `config.env_options`.
        on_episode: Called with each finished episode record (progress display; with Ray: key and success only);
            an episode left pending comes as `{"key", "error", "pending": True}`.
        on_step: Called after each step of a local episode with `{"key", "t", "prompt_tokens", "completion_tokens"}`.
        executor: "local" (threads, default) or "ray" (episodes as Ray tasks through `refine.executor`; needs `out`,
            and `agent` must be a zero-argument factory such as `functools.partial(resolve_agent, spec, lm)`, which
            each worker process calls once: LMs with in-process engines cannot be shipped to workers).
        ray_address: The Ray cluster to join with executor="ray" (default: start a local instance).
        start_together_s: With local threads, the first episode of each worker waits until all of them have reset
            their environments (at most this many seconds; 0: no waiting), so that an in-process LM batches the
            first turn of every episode in one forward pass.

    Returns:
        The summary and all episode records (including those of an earlier, resumed run). `summary["run"]` has
        `pending` (episodes without a result) and, for a run that failed, `failure` (the reason; the manifest then
        says `failed`).

    Raises:
        KeyboardInterrupt: (`refine.interrupt.Interrupted`) on Ctrl-C/SIGTERM, after the manifest was marked.
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
        from refine.eval.resume import resume_config, stored_config
        from refine.store import RunStore

        # The deadline is how long to wait, not what is measured: a resume may change it (it is in the summary).
        stored = config.model_dump(exclude={"episode_timeout"})
        if resume:  # a run made before a config field existed resumes with its default (refine.eval.resume)
            stored = resume_config(stored, stored_config(out))
        store = RunStore(out, config=stored, resume=resume, resume_ignores=EvalConfig.RESUME_IGNORES)
    try:
        return _evaluate(agent, config, store, env_factory, on_episode, on_step, ex_cfg, start_together_s)
    except KeyboardInterrupt:
        if store is not None:
            store.mark_interrupted()
        raise
    except RunFailedError as exc:  # the run cannot go on (a refused API key): its reason goes to the manifest
        if store is not None:
            store.mark_failed(str(exc))
        raise
    finally:
        if store is not None:
            store.close()


def _evaluate(
    agent: Any,
    config: EvalConfig,
    store: Any,
    env_factory: Callable[[str, bool], Any] | None,
    on_episode: Callable[[dict[str, Any]], None] | None,
    on_step: Callable[[dict[str, Any]], None] | None,
    ex_cfg: Any,
    start_together_s: float,
) -> EvalResult:
    specs = episode_specs(config)
    todo = [s for s in specs if store is None or not store.has(s["key"])]
    pool = EnvPool(env_factory or default_factory(config, agent))
    held = set(config.held_in)
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()

    first_wave = {s["key"] for s in todo[: config.workers]}  # the tasks the worker threads pick up first
    gate = StartGate(len(first_wave), start_together_s)

    def play(spec: dict[str, Any]) -> None:
        if interrupt.requested():  # stopping: start nothing new (the episode stays pending for --resume)
            raise interrupt.Interrupted()
        key = spec["key"]
        ready = functools.partial(gate.arrive, key) if key in first_wave else None

        def episode(stop: Callable[[], bool]) -> dict[str, Any]:
            env = pool.acquire(spec["env"], spec["variant"])
            try:
                counter = CallCounter()  # DSPy's retries of rate limits and 5xx in this episode's calls count here
                token = CURRENT_COUNTER.set(counter)
                install_retry_hook()
                try:
                    rec = run_episode(agent, env, spec, config.max_steps, ready=ready, on_step=on_step, stop=stop)
                finally:
                    CURRENT_COUNTER.reset(token)
                rec["retried_calls"] = sum(counter.retried.values())
                return rec
            finally:
                pool.release(spec["env"], spec["variant"], env)

        try:
            rec = play_with_deadline(episode, config.episode_timeout, name=f"refine-episode-{key}")
        except BaseException:
            gate.abort()  # this run is failing: nobody waits for the episode that will never arrive
            raise
        if ready is not None:
            ready()  # an episode that ended before acting (reset failed, ...) still arrives
        if interrupt.requested():  # finished while stopping: its LM calls may have been cut short, nothing is written
            raise interrupt.Interrupted()
        if rec is None or rec.get("lm_failed"):  # no measurement of the agent: left pending for --resume
            error = timeout_error(config.episode_timeout or 0) if rec is None else rec["error"]
            logger.debug("episode %s left pending: %s", key, error)  # the summary and the final line say it
            if store is not None:
                store.append("errors", {"item": key, "error": error}, f"{key}!error-{uuid.uuid4().hex[:12]}")
            with lock:
                failures.append({"key": key, "error": error})
            if on_episode is not None:
                on_episode({"key": key, "error": error, "pending": True})
            return
        rec["held_in"] = spec["env"] in held
        rec["model"] = config.model or str(getattr(agent, "model", "") or "")
        if store is not None:
            store.append("episodes", rec, key=key)
        with lock:
            records.append({"key": key, **rec})
        if on_episode is not None:
            on_episode({"key": key, **rec})

    started = time.perf_counter()
    try:
        if ex_cfg.executor == "ray":
            play_on_ray(agent, config, store, todo, env_factory, on_episode, ex_cfg)
        else:
            play_local(todo, play, config.workers, gate.abort)
    finally:
        pool.close()
    wall = time.perf_counter() - started
    all_records = list(store.records("episodes")) if store is not None else records
    pending = _pending_errors(store, specs, failures)
    summary = summarize(all_records, config.held_in, settings=config.settings())
    not_played = sum(1 for s in specs if store is not None and not store.has(s["key"]))
    summary["run"] = {
        "episodes_played": len(todo),
        "pending": max(not_played, len(pending)),
        "wall_s": round(wall, 3),
        "episodes_per_min": round(60 * len(todo) / wall, 3) if wall > 0 and todo else None,
        "workers": config.workers,
        "executor": ex_cfg.executor,
        "episode_timeout": config.episode_timeout,
        "agent": config.agent,
        "model": config.model or str(getattr(agent, "model", "") or ""),
        "retried_calls": sum(int(r.get("retried_calls") or 0) for r in all_records),
    }
    if summary["run"]["pending"]:
        summary["warnings"].append(
            f"{summary['run']['pending']} episode(s) have no result (their LM failed, or they ran past the "
            "episode deadline) and are not counted; rerun with --resume to play them."
        )
    failure = _failure(all_records, pending)
    if failure:
        summary["run"]["failure"] = failure
    if store is not None:
        _write_json(store.path / "summary.json", summary)
        brief: dict[str, Any] = {k: summary[k] for k in ("overall", "held_in", "held_out") if k in summary}
        brief["retried_calls"] = summary["run"]["retried_calls"]
        if failure:
            store.update_manifest(status="failed", failure=failure, summary=brief)
        elif summary["run"]["pending"]:
            store.update_manifest(status="incomplete", summary=brief, pending=summary["run"]["pending"])
        else:
            store.finish(summary=brief)
    return EvalResult(summary=summary, records=all_records, out=str(store.path) if store is not None else None)
