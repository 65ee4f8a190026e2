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
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine.errors import ConfigError, RefineError

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

DEFAULT_ENVS = ("babyai", "scienceworld", "pddl", "textworld")
_RATES = ("success_rate", "progress_rate", "invalid_rate", "stuck_rate", "mean_steps")
SUITES = ("refine", "agentboard")


class EvalConfig(BaseModel):
    """What to evaluate; one object feeds both the Python API and `refine eval`."""

    model_config = ConfigDict(extra="forbid")

    envs: list[str] = Field(default_factory=lambda: list(DEFAULT_ENVS), description="Environments to evaluate on.")
    episodes: int = Field(default=5, ge=1, description="Episodes per environment (and per variant).")
    seed: int = Field(default=0, ge=0, description="Episode i of an environment uses seed `seed + i`.")
    max_steps: int = Field(default=30, ge=1, description="Step bound per episode (AgentBoard: 30).")
    workers: int = Field(default=8, ge=1, description="Episodes played at the same time (threads).")
    perturb: bool = Field(default=False, description="Also play every episode with reworded actions.")
    held_in: list[str] = Field(default_factory=list, description="Environments the agent was trained on.")
    env_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Constructor options per environment, e.g. {'pddl': {'tasks': ['blocks']}}."
    )
    agent: str = Field(default="", description="Agent spec (recorded in the manifest).")
    model: str = Field(default="", description="Model id of the agent (recorded in the manifest).")
    suite: str = Field(
        default="refine",
        description="'refine' (this project's environments) or 'agentboard' (AgentBoard's action spaces, subgoal "
        "progress and success rules where they can be reproduced offline).",
    )
    annotations: str | None = Field(
        default=None, description="With suite='agentboard': AgentBoard's data folder (DIR/<task>/test.jsonl subgoals)."
    )
    decoding: dict[str, Any] = Field(
        default_factory=dict, description="The agent's decoding settings (recorded in the summary), e.g. temperature."
    )

    @field_validator("envs", "held_in")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        v = value.strip().lower()
        if v not in SUITES:
            raise ValueError(f"unknown suite {value!r}; use one of: {', '.join(SUITES)}")
        return v

    def settings(self) -> dict[str, Any]:
        """What produced the numbers: suite, step bound, episodes, seeds, decoding (the summary's `settings`)."""
        return {
            "suite": self.suite,
            "envs": list(self.envs),
            "max_steps": self.max_steps,
            "episodes": self.episodes,
            "seeds": [self.seed, self.seed + self.episodes - 1],
            "perturb": self.perturb,
            "decoding": dict(self.decoding),
            "agent": self.agent,
            "model": self.model,
            "annotations": self.annotations,
            "env_options": self.env_options,
        }


class EvalResult(BaseModel):
    """The outcome of `evaluate`: the summary, the episode records and the run directory (if any)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    out: str | None = None


def episode_specs(config: EvalConfig) -> list[dict[str, Any]]:
    """The episodes of a config, grouped by environment and variant.

    Grouping matters for speed: episodes that run at the same time then share one system prompt (instructions,
    environment, actions), and the embedded engine computes that prefix's KV cache once for the whole batch instead
    of once per row.
    """
    variants = ["base", "perturbed"] if config.perturb else ["base"]
    specs = []
    for env in config.envs:
        for variant in variants:
            for i in range(config.episodes):
                specs.append(
                    {"key": f"{env}:{variant}:{i}", "env": env, "variant": variant, "index": i, "seed": config.seed + i}
                )
    return specs


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and " ".join(a.lower().split()) == " ".join(b.lower().split())


def run_episode(
    agent: Any, env: Any, spec: Mapping[str, Any], max_steps: int, ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Play one episode; returns its record (never raises for agent or environment failures: they are recorded).

    `ready`, if given, is called once the environment is reset and the agent started, right before its first action.
    """
    from refine.programs.agent import describe_actions

    started = time.perf_counter()
    record: dict[str, Any] = {
        "env": spec["env"],
        "variant": spec.get("variant", "base"),
        "index": spec.get("index", 0),
        "seed": spec.get("seed"),
        "task": None,
        "instruction": "",
        "success": False,
        "progress": 0.0,
        "steps": 0,
        "invalid_steps": 0,
        "repeated_steps": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "error": None,
        "initial_observation": "",
        "trajectory": [],
    }
    try:
        first = env.reset(seed=spec.get("seed"))
    except RefineError as exc:
        record["error"] = f"reset failed: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    except Exception as exc:  # third-party environment failure
        record["error"] = f"reset failed: {type(exc).__name__}: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    record["task"] = getattr(env, "task", None) or first.info.get("task")
    record["instruction"] = first.instruction
    record["initial_observation"] = first.observation
    actions = describe_actions(first.available_actions, first.info.get("action_descriptions"))
    try:
        start_with_env = getattr(agent, "start_with_env", None)  # reference agents (expert, random) read the env
        if callable(start_with_env):
            session = start_with_env(env, first)
        else:
            session = agent.start(first.instruction, getattr(env, "description", ""), actions)
    except Exception as exc:  # a broken agent is a recorded failure of this episode
        record["error"] = f"agent failed to start: {type(exc).__name__}: {exc}"
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record
    if ready is not None:
        ready()
    observation = first.observation
    best = 0.0
    prev_action: str | None = None
    prev_feedback: str | None = None
    for t in range(max_steps):
        act = session.act(observation)
        record["prompt_tokens"] += act.prompt_tokens
        record["completion_tokens"] += act.completion_tokens
        step: dict[str, Any] = {"t": t, "observation": observation, "thought": act.thought, "action": act.action}
        done = False
        if act.action is None:
            feedback = (
                f"Your reply could not be used ({act.error}). Answer with one line 'Thought: ...' and one line "
                "'Action: <one action>'."
            )
            step.update(invalid=True, reason=act.error, raw=act.raw[:2000])
        else:
            try:
                result = env.step(act.action)
            except Exception as exc:  # an environment crash ends the episode, recorded
                record["error"] = f"step failed: {type(exc).__name__}: {exc}"
                step.update(invalid=True, reason=record["error"], feedback="", progress=best, repeated=False)
                record["trajectory"].append(step)
                break
            feedback = result.observation
            best = max(best, float(result.progress))
            done = bool(result.done)
            record["success"] = record["success"] or bool(result.success)
            step.update(invalid=bool(result.invalid))
        repeated = _same(act.action, prev_action) and _same(feedback, prev_feedback)
        step.update(feedback=feedback, progress=best, repeated=repeated, done=done)
        record["trajectory"].append(step)
        record["invalid_steps"] += int(step["invalid"])
        record["repeated_steps"] += int(repeated)
        prev_action, prev_feedback = act.action, feedback
        observation = feedback
        if done:
            break
    record["steps"] = len(record["trajectory"])
    record["progress"] = 1.0 if record["success"] else best
    record["wall_s"] = round(time.perf_counter() - started, 3)
    return record


def _metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    from refine.stats import MIN_EPISODES, bootstrap_mean, wilson

    n = len(records)
    steps = sum(r["steps"] for r in records)
    wins = sum(bool(r["success"]) for r in records)
    invalid = sum(r["invalid_steps"] for r in records)
    stuck = sum(r["repeated_steps"] for r in records)
    return {
        "episodes": n,
        "n": n,
        "steps": steps,
        "success_rate": wins / n if n else 0.0,
        "success_ci": list(wilson(wins, n)),
        "progress_rate": sum(float(r["progress"]) for r in records) / n if n else 0.0,
        "progress_ci": list(bootstrap_mean([float(r["progress"]) for r in records])),
        # Per-step rates: steps of one episode are not independent, so these intervals are optimistic.
        "invalid_rate": invalid / steps if steps else 0.0,
        "invalid_ci": list(wilson(invalid, steps)),
        "stuck_rate": stuck / steps if steps else 0.0,
        "stuck_ci": list(wilson(stuck, steps)),
        "mean_steps": steps / n if n else 0.0,
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "errors": sum(1 for r in records if r.get("error")),
        "small_n": n < MIN_EPISODES,
    }


def _macro(per_env: list[dict[str, Any]], groups: list[list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Average of per-environment rates (each environment weighs the same, as in AgentBoard), summed counts.

    `groups` (the episode records of each environment) give the intervals: a bootstrap stratified by environment.
    """
    from refine.stats import stratified_bootstrap

    if not per_env:
        return _metrics([])
    out: dict[str, Any] = {k: sum(m[k] for m in per_env) / len(per_env) for k in _RATES}
    for k in ("episodes", "steps", "prompt_tokens", "completion_tokens", "errors"):
        out[k] = sum(m.get(k, 0) for m in per_env)
    out["n"] = out["episodes"]
    out["small_n"] = any(m.get("small_n", False) for m in per_env)
    if groups is not None:
        out["success_ci"] = list(stratified_bootstrap([[float(bool(r["success"])) for r in g] for g in groups]))
        out["progress_ci"] = list(stratified_bootstrap([[float(r["progress"]) for r in g] for g in groups]))
    return out


def _drop(base: Mapping[str, Any], perturbed: Mapping[str, Any]) -> dict[str, float]:
    return {
        "success_rate": base["success_rate"] - perturbed["success_rate"],
        "progress_rate": base["progress_rate"] - perturbed["progress_rate"],
    }


def _variant_name(v: str) -> str:
    return "original" if v == "base" else "reworded"


def summarize(
    records: Iterable[Mapping[str, Any]], held_in: Iterable[str] = (), settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Per-environment, overall and held-in/held-out metrics (and perturbation drops) from episode records.

    `settings` (see `EvalConfig.settings`) is stored as the summary's `settings` and names its suite.
    """
    from refine.stats import MIN_EPISODES

    recs = [dict(r) for r in records]
    held = {h.lower() for h in held_in}
    envs = sorted({r["env"] for r in recs})
    variants = [v for v in ("base", "perturbed") if any(r.get("variant", "base") == v for r in recs)]
    summary: dict[str, Any] = {"envs": {}, "variants": variants}
    if settings is not None:
        summary["suite"] = settings.get("suite", "refine")
        summary["settings"] = dict(settings)
    warnings: list[str] = []
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for env in envs:
        entry: dict[str, Any] = {"held_in": env in held}
        for v in variants:
            rs = [r for r in recs if r["env"] == env and r.get("variant", "base") == v]
            if rs:
                entry[v] = _metrics(rs)
                by_cell[(env, v)] = rs
                if len(rs) < MIN_EPISODES:
                    warnings.append(
                        f"{env} ({_variant_name(v)} actions): n={len(rs)} episodes < {MIN_EPISODES}; "
                        "its rates are too uncertain to compare (see the intervals)."
                    )
        if "base" in entry and "perturbed" in entry:
            entry["drop"] = _drop(entry["base"], entry["perturbed"])
        summary["envs"][env] = entry
    for group, names in (
        ("overall", envs),
        ("held_in", [e for e in envs if e in held]),
        ("held_out", [e for e in envs if e not in held]),
    ):
        if not names:
            continue
        g: dict[str, Any] = {"envs": names}
        for v in variants:
            cells = [e for e in names if v in summary["envs"][e]]
            if cells:
                g[v] = _macro([summary["envs"][e][v] for e in cells], [by_cell[(e, v)] for e in cells])
        if "base" in g and "perturbed" in g:
            g["drop"] = _drop(g["base"], g["perturbed"])
        summary[group] = g
    summary["warnings"] = warnings
    return summary


def _episode_id(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (r["env"], r.get("variant", "base"), r.get("index", 0), r.get("seed"), r.get("task"))


def _value(r: Mapping[str, Any], metric: str) -> float:
    return float(bool(r["success"])) if metric == "success" else float(r["progress"])


def compare(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The difference run b - run a of success and progress rates, per environment and variant and overall.

    Episodes are paired by (environment, variant, index, seed, task) where both runs played exactly the same
    episodes of a cell; otherwise that cell's difference is unpaired (Newcombe for success, bootstrap for progress).
    The overall difference is the macro average over the environments both runs share.

    Returns:
        {"envs": {env: {variant: {"success": diff, "progress": diff}}}, "overall": {variant: {...}}}, each diff
        {"delta", "ci", "n_a", "n_b", "paired"} (see `refine.stats.difference`).
    """
    from refine.stats import difference, stratified_difference

    ra, rb = [dict(r) for r in a], [dict(r) for r in b]
    out: dict[str, Any] = {"envs": {}, "overall": {}}
    envs = sorted({r["env"] for r in ra} & {r["env"] for r in rb})
    variants = [v for v in ("base", "perturbed") if any(r.get("variant", "base") == v for r in ra + rb)]
    for v in variants:
        pairs_a: list[dict[str, Any]] = []
        pairs_b: list[dict[str, Any]] = []
        strata: list[str] = []
        groups_a: list[list[dict[str, Any]]] = []
        groups_b: list[list[dict[str, Any]]] = []
        all_paired = True
        for env in envs:
            ca = {_episode_id(r): r for r in ra if r["env"] == env and r.get("variant", "base") == v}
            cb = {_episode_id(r): r for r in rb if r["env"] == env and r.get("variant", "base") == v}
            if not ca or not cb:
                continue
            paired = set(ca) == set(cb)
            all_paired = all_paired and paired
            keys = sorted(ca, key=repr)
            xa = [ca[k] for k in keys] if paired else list(ca.values())
            xb = [cb[k] for k in keys] if paired else list(cb.values())
            out["envs"].setdefault(env, {})[v] = {
                metric: difference([_value(r, metric) for r in xa], [_value(r, metric) for r in xb], paired=paired,
                                   binary=metric == "success")
                for metric in ("success", "progress")
            }  # fmt: skip
            pairs_a += xa
            pairs_b += xb
            strata += [env] * len(xa)
            groups_a.append(xa)
            groups_b.append(xb)
        if not groups_a:
            continue
        overall: dict[str, Any] = {}
        for metric in ("success", "progress"):
            if all_paired:
                overall[metric] = difference(
                    [_value(r, metric) for r in pairs_a], [_value(r, metric) for r in pairs_b], paired=True,
                    strata=strata,
                )  # fmt: skip
            else:
                overall[metric] = stratified_difference(
                    [[_value(r, metric) for r in g] for g in groups_a],
                    [[_value(r, metric) for r in g] for g in groups_b],
                )
        out["overall"][v] = overall
    return out


class _StartGate:
    """Holds the first wave of episodes (one per worker) until all of them have reset their environments, so that
    their first LM calls arrive together: an in-process engine then runs them as one batch instead of splitting the
    first turn by how long each environment took to start (a ScienceWorld JVM takes seconds, a BabyAI grid none).

    Each episode arrives once (before its first action, or when it ends without acting); a gate that times out or is
    aborted lets everyone through.
    """

    def __init__(self, parties: int, timeout: float) -> None:
        self.timeout = timeout
        self._barrier = threading.Barrier(parties, timeout=timeout) if parties > 1 and timeout > 0 else None
        self._arrived: set[str] = set()
        self._lock = threading.Lock()

    def arrive(self, key: str) -> None:
        """Wait (the first time `key` arrives) until the whole wave is here, the timeout passed or the gate broke."""
        if self._barrier is None:
            return
        with self._lock:
            if key in self._arrived:
                return
            self._arrived.add(key)
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:  # timed out or aborted: go on without the rest of the wave
            logger.debug(
                "start gate opened without the whole first wave (timeout %.0f s or a failed episode)", self.timeout
            )

    def abort(self) -> None:
        """Let every waiting episode go (one of the wave failed before it could act)."""
        if self._barrier is not None:
            self._barrier.abort()


class _EnvPool:
    """Idle environment instances per (name, variant), created on demand and reused across episodes."""

    def __init__(self, factory: Callable[[str, bool], Any]) -> None:
        self.factory = factory
        self._idle: dict[tuple[str, str], queue.SimpleQueue[Any]] = {}
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self, name: str, variant: str) -> Any:
        with self._lock:
            q = self._idle.setdefault((name, variant), queue.SimpleQueue())
        try:
            return q.get_nowait()
        except queue.Empty:
            env = self.factory(name, variant == "perturbed")
            with self._lock:
                self._all.append(env)
            return env

    def release(self, name: str, variant: str, env: Any) -> None:
        self._idle[(name, variant)].put(env)

    def close(self) -> None:
        for env in self._all:
            close = getattr(env, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # closing must not hide the run's result
                    logger.debug("closing %s failed: %s", getattr(env, "name", env), exc)


def _env_options(config: EvalConfig, name: str, agent: Any = None) -> dict[str, Any]:
    """Constructor options of env `name`: the step bound, the suite's annotations, the agent's needs, the user's."""
    opts: dict[str, Any] = {"max_steps": config.max_steps}
    if config.suite == "agentboard" and config.annotations and name != "toy":
        opts["annotations"] = config.annotations
    opts.update((getattr(agent, "env_options", None) or {}).get(name, {}))  # e.g. the expert needs gold paths
    opts.update(config.env_options.get(name, {}))
    return opts


def check_config(config: EvalConfig, agent: Any = None) -> None:
    """Validate every environment name and option of `config` before anything is played (ConfigError, one line)."""
    from refine.envs import check_env
    from refine.errors import EnvError

    unknown = set(config.env_options) - set(config.envs)
    if unknown:
        raise ConfigError(f"Options given for environments that are not evaluated: {sorted(unknown)}; see --envs.")
    for name in config.envs:
        try:
            check_env(name, config.suite, _env_options(config, name, agent))
        except EnvError as exc:
            raise ConfigError(str(exc)) from exc


def _default_factory(config: EvalConfig, agent: Any = None) -> Callable[[str, bool], Any]:
    from refine.envs import make_env

    def factory(name: str, perturbed: bool) -> Any:
        return make_env(name, perturb=perturbed, suite=config.suite, **_env_options(config, name, agent))

    return factory


class _EpisodeWork:
    """The Ray work function of `evaluate`: each worker process builds the agent and its environments once."""

    def __init__(
        self, agent_factory: Callable[[], Any], config: EvalConfig, env_factory: Callable[[str, bool], Any] | None
    ) -> None:
        self.agent_factory = agent_factory
        self.config = config
        self.env_factory = env_factory
        self._agent: Any = None
        self._pool: _EnvPool | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        state.update(_agent=None, _pool=None)  # built again in each worker process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, spec: dict[str, Any]) -> list[Any]:
        from refine.executor import Emit

        with self._lock:
            if self._pool is None:
                self._agent = self.agent_factory()
                self._pool = _EnvPool(self.env_factory or _default_factory(self.config, self._agent))
        env = self._pool.acquire(spec["env"], spec["variant"])
        try:
            rec = run_episode(self._agent, env, spec, self.config.max_steps)
        finally:
            self._pool.release(spec["env"], spec["variant"], env)
        rec["held_in"] = spec["env"] in set(self.config.held_in)
        rec["model"] = self.config.model or str(getattr(self._agent, "model", "") or "")
        return [Emit("episodes", spec["key"], rec)]


def _play_on_ray(
    agent_factory: Callable[[], Any],
    config: EvalConfig,
    store: Any,
    todo: list[dict[str, Any]],
    env_factory: Callable[[str, bool], Any] | None,
    on_episode: Callable[[dict[str, Any]], None] | None,
    ex_cfg: Any,
) -> None:
    from refine.executor import run_items

    def progress(outcome: Any) -> None:
        if on_episode is not None and outcome.status != "skipped":
            on_episode({"key": outcome.key, **outcome.info})

    summary = run_items(
        todo,
        _EpisodeWork(agent_factory, config, env_factory),
        store=store,
        key="key",
        executor=ex_cfg,
        progress=progress,
        outcome_fields=("success", "progress"),
    )
    if summary.pending:
        logger.warning("%d episodes did not finish on Ray; rerun with --resume to play them", summary.pending)


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
    pool = _EnvPool(env_factory or _default_factory(config, agent))
    held = set(config.held_in)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    first_wave = {s["key"] for s in todo[: config.workers]}  # the tasks the worker threads pick up first
    gate = _StartGate(len(first_wave), start_together_s)

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
            _play_on_ray(agent, config, store, todo, env_factory, on_episode, ex_cfg)
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
