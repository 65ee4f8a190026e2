"""Synthesis runs: a refinement program over many personas or environment episodes, in parallel, into a resumable
run directory. Every synthesis program runs here, through one record writer (`refine.synthesis.item_work.SynthWork`).

Items are (index, persona, seed) for one-shot programs (AgentRefine), or (env, seed) episodes of real environments
for the interactive program (`--program interactive --env babyai`, refined by an LM or, with `--refiner env`, by
the environment's own expert: the quickstart's on-policy data). Each item has a stable key, so a killed run resumed
with the same settings neither loses nor duplicates a record. The program (by default `AgentRefinePipeline`)
returns a verified `Trajectory`; accepted ones go to `accepted.jsonl`, the others (with every reason, parse
failures included) to `rejected.jsonl`. The manifest totals LM calls, tokens, and tokens per accepted trajectory
per model.

Each item is a distinct sample: its seed goes into every LM request (`rollout_id`, and the `seed` sampling option
when the LM samples), so items of one persona never share a cached answer and a resumed item gets its own answers
back from the cache. An item whose LM calls fail on transport (timeouts, rate limits, server or connection errors,
its deadline) is retried with backoff and then left pending in `errors.jsonl`, not rejected: `--resume` retries it.
Only content failures (unparseable output, verifier reasons) are rejections.

Example:
    >>> from refine.synthesis import plan_items
    >>> [(it["persona"], it["seed"]) for it in plan_items(["a baker", "a sailor"], n=3, seed=0)]
    [('a baker', 0), ('a sailor', 1), ('a baker', 2)]
"""

from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from refine.data import content_id
from refine.errors import ConfigError
from refine.lm.resolve import is_remote, resolve_lm
from refine.lm.usage import usage_tokens
from refine.programs_registry import load_program
from refine.synthesis.item_work import ENV_PROGRAMS, SynthWork, TransientLMError, is_transient

__all__ = [
    "SynthConfig",
    "SynthWork",
    "TransientLMError",
    "is_transient",
    "lm_settings",
    "load_program",
    "plan_env_items",
    "plan_items",
    "resolve_lm",
    "run_synth",
    "synth_totals",
]

logger = logging.getLogger(__name__)

LOCAL_MAX_TOKENS = 2048
"""Token limit per call of a teacher (in-process or remote): a whole script or trajectory is one JSON answer."""
ENV_MAX_TOKENS = 96
"""Token limit per turn of an agent playing an environment (a short thought and one action)."""
DEFAULT_TIMEOUT_S = 60.0


class SynthConfig(BaseModel):
    """Settings of a synthesis run; one class for the Python API and `refine synth`. Stored in the manifest."""

    model_config = ConfigDict(extra="forbid")

    #: Keys a resumed run may change: how hard to try, not what is made (`RunStore(resume_ignores=...)`); the first
    #: line also holds the run settings older manifests stored.
    RESUME_IGNORES: ClassVar[tuple[str, ...]] = (
        *("resume", "out", "progress", "workers", "num_threads", "executor", "ray_address"),
        *("timeout", "item_timeout", "retries", "keep_failed", "trust_program"),
    )

    personas: str = Field("builtin", description="'builtin' or a JSONL/CSV/text file of personas.")
    n: int = Field(4, ge=1, description="Number of items (persona, seed) to synthesize.")
    lm: str = Field("embedded", description="Teacher LM: 'embedded', 'local/<dir>', a LiteLLM string, or py:mod:fn.")
    program: str = Field("agentrefine", description="Built-in program name, 'module:attr', or a saved program dir.")
    seed: int = Field(0, description="Base seed: persona order and per-item seeds derive from it.")
    max_attempts: int = Field(4, ge=1, description="Attempts per stage (script, trajectory) before rejection.")
    min_refinements: int = Field(2, ge=0, description="Error -> fix episodes an accepted trajectory needs.")
    workers: int = Field(8, ge=1, description="Parallel items (threads; an embedded LM batches their calls).")
    timeout: float | None = Field(
        DEFAULT_TIMEOUT_S, gt=0, description="Seconds one call to a remote LM may take (in-process models: unused)."
    )
    item_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds one item may take in all (a guard against servers that trickle bytes); default "
        "timeout x 2 x max_attempts for remote LMs, none for in-process models.",
    )
    retries: int = Field(2, ge=0, description="Times an item that failed on LM transport is redone before pending.")
    keep_failed: bool = Field(False, description="On --resume, leave items that failed on LM transport pending.")
    trust_program: list[str] = Field(
        default_factory=list, description="'module:attr' programs a saved --program DIR may name (you trust them)."
    )
    env: list[str] = Field(
        default_factory=list,
        description="Real environments the program plays (--program interactive); then --n is episodes per env.",
    )
    env_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Constructor options per environment, e.g. {'pddl': {'tasks': ['blocks']}}."
    )
    refiner: Literal["lm", "env"] = Field(
        "lm", description="Who fixes a flagged step of an environment episode: the LM, or the environment's expert."
    )
    max_steps: int = Field(30, ge=1, description="Player actions per environment episode.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description=f"Tokens per LM call (default {LOCAL_MAX_TOKENS}; {ENV_MAX_TOKENS} per environment turn; "
        "py: LMs keep their own).",
    )


def plan_items(personas: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The run's work list: `n` items cycling through a seeded shuffle of `personas`, each with a stable key."""
    if not personas:
        raise ConfigError("No personas to synthesize from; pass --personas builtin or a non-empty file.")
    order = list(personas)
    random.Random(seed).shuffle(order)
    items = []
    for i in range(n):
        persona = order[i % len(order)]
        item_seed = seed + i
        key = content_id({"persona": persona, "seed": item_seed, "index": i})
        items.append({"key": key, "index": i, "persona": persona, "seed": item_seed})
    return items


def plan_env_items(envs: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The work list of an environment run: episodes seed .. seed+n-1 (train split) of each env, keyed `env-seed`.

    Example:
        >>> [it["key"] for it in plan_env_items(["babyai", "pddl"], n=2, seed=4)]
        ['babyai-4', 'babyai-5', 'pddl-4', 'pddl-5']
    """
    if not envs:
        raise ConfigError("No environments to play; pass --env NAME (e.g. --env babyai).")
    items: list[dict[str, Any]] = []
    for env in envs:
        for i in range(n):
            items.append({"key": f"{env}-{seed + i}", "index": len(items), "env": env, "seed": seed + i})
    return items


def _check_personas_unchanged(out: Path, sha: str, spec: str, resume: bool, run_config: dict[str, Any]) -> None:
    """A resumed run must plan the same items: refuse when the persona file was edited since the run started."""
    import json

    if not resume or not (out / "manifest.json").is_file():
        return
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        before = manifest.get("config", {}).get("personas_sha256")
    except (OSError, ValueError, AttributeError):
        return  # the store reports an unreadable manifest with its own message
    if before is None:
        run_config.pop("personas_sha256")  # a run from before personas were hashed
    elif before != sha:
        from refine.errors import RunStoreError

        raise RunStoreError(
            f"Cannot resume {out}: the personas ({spec}) changed since the run started, so its items would not match "
            "the records. Restore the persona file, or start a new run in another --out directory."
        )


def _register_lm_secrets(lm: Any) -> None:
    """An API key given to the LM in code is scrubbed from records and logs like one from the environment."""
    from refine.store import register_secret

    for key in ("api_key", "token"):
        register_secret((getattr(lm, "kwargs", None) or {}).get(key))


def synth_totals(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Manifest totals over all records of a run: counts, LM calls and tokens per model, tokens per accepted."""
    per_model: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    accepted = rejected = parse_failures = 0
    for rec in records:
        if rec.get("accepted"):
            accepted += 1
        else:
            rejected += 1
        if (rec.get("verdict") or {}).get("stage") == "parse" or any(
            a.get("error") for a in rec.get("attempts") or [] if isinstance(a, dict)
        ):
            parse_failures += 1
        for model, u in (rec.get("usage") or {}).items():
            for k in ("calls", "prompt_tokens", "completion_tokens"):
                per_model[model][k] += int(u.get(k, 0) or 0)
            for k in ("failed_calls", "retried_calls"):  # the trace of transport faults that were got over
                if u.get(k):
                    per_model[model][k] = per_model[model].get(k, 0) + int(u[k])
    tokens_per_accepted = {
        m: round((u["prompt_tokens"] + u["completion_tokens"]) / accepted, 1) if accepted else None
        for m, u in per_model.items()
    }
    return {
        "accepted": accepted,
        "rejected": rejected,
        "records": accepted + rejected,
        "acceptance_rate": round(accepted / (accepted + rejected), 4) if accepted + rejected else 0.0,
        "items_with_parse_failures": parse_failures,
        "lm_calls": sum(u["calls"] for u in per_model.values()),
        "failed_calls": sum(u.get("failed_calls", 0) for u in per_model.values()),
        "retried_calls": sum(u.get("retried_calls", 0) for u in per_model.values()),
        "tokens": sum(u["prompt_tokens"] + u["completion_tokens"] for u in per_model.values()),
        "per_model": dict(per_model),
        "tokens_per_accepted": tokens_per_accepted,
    }


def lm_settings(config: SynthConfig) -> dict[str, Any]:
    """`resolve_lm` settings for the run's LM: the remote call timeout, and a token limit per call."""
    kwargs: dict[str, Any] = {}
    remote = is_remote(config.lm)
    if remote and config.timeout:
        kwargs["timeout"] = config.timeout
    if config.max_tokens is not None:
        kwargs["max_tokens"] = config.max_tokens
    elif not config.lm.startswith("py:"):  # a whole script or trajectory is one answer: no server cap may cut it
        kwargs["max_tokens"] = ENV_MAX_TOKENS if config.env else LOCAL_MAX_TOKENS
    return kwargs


def _plan(config: SynthConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the run's items, the config stored in its manifest), every input checked before any work starts."""
    if config.env:
        from refine.envs import check_env

        stray = sorted(set(config.env_options) - set(config.env))
        if stray:
            raise ConfigError(f"env_options name {stray}, which are not among the environments {config.env}.")
        for name in config.env:
            check_env(name, options=config.env_options.get(name))
        return plan_env_items(config.env, config.n, config.seed), config.model_dump()
    from refine.synthesis.persona_loading import load_personas

    if config.program in ENV_PROGRAMS or config.refiner != "lm" or config.env_options:
        raise ConfigError(
            f"The {config.program} program starts from a script or an environment, not a persona: pass --env NAME "
            "(e.g. --env babyai --refiner env) to play a real environment."
            if config.program in ENV_PROGRAMS
            else "--refiner and --env-option are settings of environment runs; pass --env NAME as well."
        )
    personas = load_personas(config.personas)
    return plan_items(personas, config.n, config.seed), {**config.model_dump(), "personas_sha256": content_id(personas)}


class _Counts:
    """The run's live counts for progress displays: items by outcome, LM calls and tokens as each call ends, and
    `in_flight`, the share of the items now running that their calls so far suggest is done (so a bar moves, and
    has an ETA, before the first item finishes)."""

    def __init__(self, calls_per_item: float) -> None:
        self.values: dict[str, Any] = {"accepted": 0, "rejected": 0, "failed": 0, "skipped": 0, "tokens": 0}
        self.values.update(calls=0, in_flight=0.0)
        self._running: dict[str, int] = {}
        self._prior = calls_per_item
        self._done_calls = 0
        self._done_items = 0
        self.lock = threading.Lock()

    def _share(self) -> float:
        per_item = self._done_calls / self._done_items if self._done_items else self._prior
        return sum(min(calls / max(per_item, 1.0), 0.95) for calls in self._running.values())

    def call(self, key: str, tokens: int, calls: int) -> dict[str, Any]:
        with self.lock:
            self.values["tokens"] += tokens
            self.values["calls"] += calls
            self._running[key] = self._running.get(key, 0) + calls
            self.values["in_flight"] = round(self._share(), 3)
            return dict(self.values)

    def finish(self, key: str, lm_calls: int | None) -> None:
        """An item is over (call under `lock`): its calls teach the expected calls per item."""
        running = self._running.pop(key, 0)
        if lm_calls is not None or running:
            self._done_calls += lm_calls if lm_calls is not None else running
            self._done_items += 1
        self.values["in_flight"] = round(self._share(), 3)


def run_synth(
    config: SynthConfig,
    out: str | Path,
    *,
    resume: bool = False,
    lm: Any = None,
    program: Any = None,
    progress: Callable[[Any, dict[str, Any]], None] | None = None,
    on_call: Callable[[dict[str, Any]], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a synthesis run into `out`; return the manifest totals.

    Args:
        config: the run's settings (stored in the manifest; a resume must use the same ones).
        out: the run directory.
        resume: continue a run in `out`, skipping items already recorded.
        lm: an LM object to use instead of `config.lm` (tests, notebooks).
        program: a compiled program to use instead of `config.program`.
        progress: `progress(outcome, counts)` after each item; counts has accepted/rejected/failed/skipped, tokens,
            calls and in_flight (see `on_call`).
        on_call: `on_call(counts)` as each LM call ends (local executor): tokens and calls so far, and `in_flight`,
            the estimated share of the running items that is done, so progress shows before the first item ends.
        executor: "local" (threads) or "ray" (Ray tasks; each worker process builds its own LM from `config.lm`
            and the program from `config.program`, so both must be specs, not objects).
        ray_address: the Ray cluster to join with executor="ray" (default: start one here).

    Raises:
        ConfigError, RunStoreError, LMError: with a message that says how to fix the problem.
    """
    import dspy

    from refine.executor import WorkerLM, run_items
    from refine.store import RunStore

    items, run_config = _plan(config)
    options: dict[str, Any] = {"max_attempts": config.max_attempts, "min_refinements": config.min_refinements}
    if config.env:
        options.update(max_steps=config.max_steps, refiner=config.refiner)
    lm_kwargs = lm_settings(config)
    item_timeout = config.item_timeout
    if item_timeout is None and is_remote(config.lm) and config.timeout:
        item_timeout = config.timeout * 2 * (config.max_steps if config.env else config.max_attempts)
    counts = _Counts(calls_per_item=config.max_steps if config.env else 2.0)

    def call_ended(key: str, tokens: int, calls: int) -> None:
        snapshot = counts.call(key, tokens, calls)
        if on_call is not None:
            on_call(snapshot)

    work = SynthWork(
        program if program is not None else config.program,
        options,
        config.min_refinements,
        retries=config.retries,
        item_timeout=item_timeout,
        trust=config.trust_program,
        env_options={env: config.env_options.get(env, {}) for env in config.env},
        on_call=call_ended if executor != "ray" else None,
    )
    if executor == "ray" and (lm is not None or program is not None):
        raise ConfigError("With --executor ray the LM and the program are given as specs (config.lm, config.program).")
    # With Ray only the workers need the LM: the driver may be a small head node without the model.
    the_lm = lm if lm is not None else (None if executor == "ray" else resolve_lm(config.lm, **lm_kwargs))
    worker_lm: Any = WorkerLM(config.lm, **lm_kwargs) if executor == "ray" else the_lm
    _register_lm_secrets(the_lm)
    from refine.lm.usage import install_retry_hook
    from refine.synthesis.item_work import warm_up

    install_retry_hook()
    warm_up(the_lm)
    phash = work.program_hash

    def on_item(outcome: Any) -> None:
        with counts.lock:
            values = counts.values
            if outcome.status == "skipped":
                values["skipped"] += 1
            elif outcome.status == "failed":
                values["failed"] += 1
            else:
                for kind in ("accepted", "rejected"):
                    values[kind] += outcome.written.get(kind, 0)
            usage = outcome.info.get("usage") or {}
            if executor == "ray":  # the workers' SynthWork copies count tokens; the records carry them here
                values["tokens"] += sum(sum(usage_tokens(u)) for u in usage.values())
                values["calls"] += sum(int(u.get("calls", 0) or 0) for u in usage.values())
            counts.finish(outcome.key, outcome.info.get("lm_calls") if outcome.status == "done" else None)
            snapshot = dict(values)
        if progress is not None:
            progress(outcome, snapshot)

    if "personas_sha256" in run_config:
        _check_personas_unchanged(Path(out), run_config["personas_sha256"], config.personas, resume, run_config)
    with RunStore(
        out, config=run_config, resume=resume, program_hash=phash, resume_ignores=SynthConfig.RESUME_IGNORES
    ) as store:
        store.update_manifest(items=len(items), lm_model=str(getattr(the_lm, "model", config.lm)))
        kept = 0
        if resume and config.keep_failed:  # items that failed on transport stay pending, untouched
            failed = {r.get("item") for r in store.records("errors")}
            todo = [it for it in items if it["key"] not in failed or store.has(it["key"])]
            kept, items = len(items) - len(todo), todo
        with dspy.context(lm=the_lm):
            summary = run_items(
                items,
                work,
                store=store,
                key="key",
                lm=worker_lm,
                progress=on_item,
                executor=executor,
                workers=config.workers,
                ray_address=ray_address,
                outcome_fields=("usage", "lm_calls"),
            )
        totals = synth_totals([*store.records("accepted"), *store.records("rejected")])
        totals["pending"] = summary.pending + kept
        totals["errors"] = store.count("errors")
        if totals["pending"] == 0:
            store.finish(totals=totals)
        else:  # failed items stay pending: a resumed run retries them
            store.update_manifest(status="incomplete", totals=totals)
    return totals
