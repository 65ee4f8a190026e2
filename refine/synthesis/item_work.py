"""The per-item work of a synthesis run: run the program on one item, retry transport failures, write one record.

An item is either a persona (`{"persona", "seed"}`: one-shot programs such as AgentRefine) or an episode of a real
environment (`{"env", "seed"}`: the interactive program, its refiner an LM or the environment's own expert). Both
end as one `RunRecord` in `accepted` or `rejected`, with the item's usage, attempts and verdict; an item whose LM
calls failed on transport is retried and then raised as `TransientLMError` (left pending for `--resume`).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from refine.data import RunRecord, Trajectory, Verdict, jsonable
from refine.errors import ConfigError, LMError
from refine.lm.failures import raise_if_auth_failure
from refine.lm.usage import CURRENT_COUNTER, ItemUsage

__all__ = ["RETRY_BACKOFF_S", "SynthWork", "TransientLMError", "is_transient", "load_synth_program"]

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = 1.0
"""First pause before an item that failed on transport is redone (then doubled, with jitter)."""

# Options of the built-in programs that `refine synth` settings feed (others get none).
_PROGRAM_OPTIONS = {
    "agentrefine": ("max_attempts", "min_refinements"),
    "interactive": ("min_refinements", "max_steps", "refiner"),
}
ENV_PROGRAMS = ("interactive",)
"""Built-in programs that play a real environment (`--env`) instead of starting from a persona."""


class TransientLMError(LMError):
    """An item failed on LM transport, not on content: recorded in errors.jsonl and retried on `--resume`."""


# Failures of the connection, not of the answer: DSPy's retryable LM errors plus what sockets and HTTP clients raise.
_TRANSIENT_NAMES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "BadGatewayError",
        "ConnectError",
        "InternalServerError",
        "ReadTimeout",
        "RateLimitError",
        "RemoteProtocolError",
        "ServiceUnavailableError",
        "ServerError",
        "TimeoutError",
        "Timeout",
        "TransportError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for an LM failure worth retrying later (timeouts, rate limits, 5xx, dropped connections)."""
    try:
        from dspy.utils.exceptions import is_retryable_lm_error

        if isinstance(exc, Exception) and is_retryable_lm_error(exc):
            return True
    except ImportError:  # pragma: no cover - older DSPy
        pass
    if isinstance(exc, ConnectionError | TimeoutError | TransientLMError):
        return True
    if any(c.__name__ in _TRANSIENT_NAMES for c in type(exc).__mro__):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in (408, 409, 425, 429) or status >= 500)


def _env_factory(name: str, options: Mapping[str, Any]) -> Callable[[], Any]:
    from refine.envs import make_env

    # Synthesis plays the train split: evaluation's test seeds are never trained on.
    return functools.partial(make_env, name, split="train", **dict(options))


def load_synth_program(
    spec: Any,
    options: dict[str, Any] | None = None,
    trust: Sequence[str] = (),
    *,
    env: str | None = None,
    env_options: Mapping[str, Any] | None = None,
) -> Any:
    """The program of a synthesis run, through the one loader (`refine.programs_registry.load_program`).

    Built-in names get the `options` they take (max_attempts, min_refinements, max_steps, refiner). With `env`, the
    program is built to play that environment (a fresh one per episode, train split, `env_options`); without it, it
    must start from a persona. `trust`: the `module:attr` programs a saved program directory may name.

    Raises:
        ConfigError: the program cannot run on these items (an env program without `env`, a persona program with
            inputs other than persona and seed, a saved folder given an `env`).
    """
    from refine.graph import GraphModule
    from refine.programs_registry import load_program

    if not isinstance(spec, str):
        return load_program(spec)
    if env is None and spec in ENV_PROGRAMS:
        raise ConfigError(
            f"The {spec} program starts from a script or an environment, not a persona: pass --env NAME (e.g. "
            "--env babyai --refiner env) to play a real environment, or use --program agentrefine."
        )
    if env is not None and Path(spec).exists():
        raise ConfigError(
            f"--env builds the program for each environment, so it cannot take the saved program {spec!r}; "
            "pass a program name (e.g. --program interactive)."
        )
    allowed = _PROGRAM_OPTIONS.get(spec, ())
    opts = {k: v for k, v in (options or {}).items() if k in allowed}
    if env is not None:
        opts["env"] = _env_factory(env, env_options or {})
    program = load_program(spec, trust, **opts)
    if isinstance(program, GraphModule) and env is None:
        missing = [i for i in program.graph.inputs if i not in ("persona", "seed") and i not in program.graph.defaults]
        if missing:
            raise ConfigError(
                f"Program {spec!r} needs inputs {missing}; `refine synth` calls programs with persona= and seed= only. "
                "Use a program that starts from a persona (e.g. agentrefine)."
            )
    return program


def _item_lm(lm: Any, seed: int) -> Any:
    """The item's own copy of the LM, with its seed in every request: `rollout_id` (a distinct cache entry per item,
    the same one when the item is redone) and, when the LM samples, the `seed` sampling option."""
    if lm is None or not hasattr(lm, "copy") or not isinstance(getattr(lm, "kwargs", None), dict):
        return lm
    updates: dict[str, Any] = {"rollout_id": seed}
    temperature = lm.kwargs.get("temperature")
    if "seed" not in lm.kwargs and (temperature is None or temperature > 0):
        updates["seed"] = seed  # greedy decoding ignores it, and a per-item seed would split an engine's batches
    try:
        copied = lm.copy(**updates)
        # "rollout_id has no effect when temperature=0" (DSPy warns once per LM): here the cache key is the point.
        copied._warned_zero_temp_rollout = True
        return copied
    except Exception as exc:  # an LM that cannot be copied (a custom BaseLM): keep it, and say so
        logger.warning(
            "LM %s cannot carry a per-item seed (%s); items of one persona may share cached answers", lm, exc
        )
        return lm


def warm_up(lm: Any) -> None:
    """Import the LM client in this thread before the worker pool starts: threads making a process's first calls
    at once can see a half-imported `litellm` ("partially initialized module 'litellm' has no attribute ...")."""
    if lm is None or not isinstance(getattr(lm, "engine", None), str):
        return  # in-process and custom engines: nothing imported lazily
    try:
        from dspy.clients import execution  # noqa: F401
        from dspy.clients._litellm import get_litellm

        get_litellm(feature="dspy.LM")
    except Exception as exc:  # not installed or not importable: the first call reports it properly
        logger.debug("LM client warm-up skipped: %s", exc)


CallHook = Callable[[str, int, int], None]  # (item key, tokens, finished calls) as each LM call ends


class SynthWork:
    """The per-item work function of a synthesis run (picklable: programs are built lazily in each process).

    Args:
        program: a program spec (built-in name, 'module:attr', saved dir) or a compiled program object.
        options: options for built-in program factories (max_attempts, min_refinements, max_steps, refiner).
        min_refinements: used to re-verify trajectories that a custom program returns without a verdict.
        env_options: per environment, its constructor options (items with an `env` play that environment).
        on_call: `on_call(item key, tokens, calls)` as each LM call of an item ends (local runs: a live progress
            bar); not carried to Ray workers.
    """

    def __init__(
        self,
        program: Any = "agentrefine",
        options: dict[str, Any] | None = None,
        min_refinements: int = 2,
        *,
        retries: int = 2,
        item_timeout: float | None = None,
        backoff_s: float | None = None,
        trust: Sequence[str] = (),
        env_options: Mapping[str, Mapping[str, Any]] | None = None,
        on_call: CallHook | None = None,
    ):
        self.program_spec = program
        self.options = dict(options or {})
        self.min_refinements = min_refinements
        self.retries = retries
        self.item_timeout = item_timeout
        self.backoff_s = backoff_s
        self.trust = tuple(trust)
        self.env_options = {k: dict(v) for k, v in (env_options or {}).items()}
        self.on_call = on_call
        self._programs: dict[str | None, Any] = {} if isinstance(program, str) else {None: program}
        self._lock = threading.Lock()
        self._hash: str | None = None
        self.tokens = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_programs"] = {} if isinstance(self.program_spec, str) else self._programs
        state["on_call"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def program_hash(self) -> str:
        """Content hash of the program (wiring, instructions, demos), stamped on every trajectory's provenance."""
        from refine.graph import program_hash

        if self._hash is None:
            self._hash = program_hash(self.program)
        return self._hash

    @property
    def program(self) -> Any:
        """The program of the run (for an environment run, the one of its first environment)."""
        return self.program_for(next(iter(self.env_options), None))

    def program_for(self, env: str | None) -> Any:
        """The program playing `env` (None: the persona program), built on first use."""
        with self._lock:
            if None in self._programs:  # a program object plays every item
                return self._programs[None]
            if env not in self._programs:
                self._programs[env] = load_synth_program(
                    self.program_spec, self.options, self.trust, env=env, env_options=self.env_options.get(env or "")
                )
            return self._programs[env]

    def _run_once(
        self, program: Any, item: dict[str, Any], overrides: dict[str, Any], usage: ItemUsage
    ) -> tuple[Any, str | None, str]:
        """One run of the program on the item: (prediction, program error, transport failure or '')."""
        import dspy

        counter = usage.counter
        counter.errors.clear()
        box: dict[str, Any] = {}
        inputs = {"seed": item["seed"]} if "env" in item else {"persona": item["persona"], "seed": item["seed"]}

        def run() -> None:
            token = CURRENT_COUNTER.set(counter)
            try:
                with dspy.context(**overrides):
                    box["pred"] = program(**inputs)
            except Exception as exc:  # a program crash is a rejected record with its reason, never a dead run
                box["error"] = exc
            finally:
                CURRENT_COUNTER.reset(token)

        if self.item_timeout is None:
            run()
        else:
            # A daemon thread bounds the item's total time: a server that trickles a byte now and then never trips a
            # read timeout. On the deadline the thread is abandoned (its answer, if any, is dropped).
            ctx = contextvars.copy_context()
            worker = threading.Thread(target=ctx.run, args=(run,), daemon=True, name=f"refine-item-{item['index']}")
            worker.start()
            worker.join(self.item_timeout)
            if worker.is_alive():
                return None, None, f"ItemTimeout: the item ran past its deadline of {self.item_timeout:g} s"
        exc = box.get("error")
        # A refused key (401/403) stops the run, whatever the program made of the failed call (refine.lm.failures).
        for failed in [*counter.errors, *([exc] if exc is not None else [])]:
            raise_if_auth_failure(failed, dspy.settings.lm)
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"
            if is_transient(exc):
                return None, error, error
            from refine.store import scrub_secrets

            logger.warning("item %s: program failed: %s", item["key"], scrub_secrets(error))
            return None, error, ""
        pred = box.get("pred")
        accepted = bool(getattr(getattr(getattr(pred, "trajectory", None), "verdict", None), "ok", False))
        transient = [f"{type(e).__name__}: {e}" for e in counter.errors if is_transient(e)]
        # A transport failure only matters when the item did not come out accepted anyway.
        return pred, None, (transient[-1] if transient and not accepted else "")

    def _usage(self, key: str) -> ItemUsage:
        hook = self.on_call
        if hook is None:
            return ItemUsage()
        return ItemUsage(lambda tokens, calls: hook(key, tokens, calls))

    def __call__(self, item: dict[str, Any]) -> list[Any]:
        import dspy

        from refine.lm.adapter import throughput_adapter

        program = self.program_for(item.get("env"))
        usage = self._usage(item["key"])
        lm = dspy.settings.lm
        item_lm = _item_lm(lm, item["seed"])
        overrides: dict[str, Any] = {
            "track_usage": True,
            "usage_tracker": usage.tracker,
            "callbacks": [*dspy.settings.callbacks, usage.counter],
        }
        if item_lm is not None:
            overrides["lm"] = item_lm
        if lm is not None and dspy.settings.adapter is None:
            overrides["adapter"] = throughput_adapter(lm)
        t0 = time.perf_counter()
        for attempt in range(self.retries + 1):
            pred, error, transient = self._run_once(program, item, overrides, usage)
            if not transient:
                break
            if attempt < self.retries and not transient.startswith("ItemTimeout"):
                # The calls that succeeded come back from the cache (same rollout_id); only the failed one is redone.
                backoff = RETRY_BACKOFF_S if self.backoff_s is None else self.backoff_s
                time.sleep(backoff * 2**attempt * random.uniform(0.5, 1.5))
                continue
            from refine.store import scrub_secrets

            raise TransientLMError(
                scrub_secrets(
                    f"item {item['key']}: LM transport failure after {attempt + 1} tries ({transient}); "
                    f"{usage.calls} LM calls, {sum(usage.counter.failures.values())} failed. "
                    "Left pending: rerun with --resume."
                )
            )
        return [self._record(item, pred, error, usage, lm, time.perf_counter() - t0)]

    def _record(self, item: dict[str, Any], pred: Any, error: str | None, usage: ItemUsage, lm: Any, s: float) -> Any:
        from refine.executor import Emit

        by_model = usage.by_model()
        traj, attempts = self._trajectory(pred, item, error)
        traj.provenance.usage = by_model
        traj.provenance.program_hash = self.program_hash
        traj.provenance.seed = item["seed"]
        traj.provenance.persona = traj.provenance.persona or item.get("persona", "")
        for role, model in list(traj.provenance.models.items()):
            if not model and lm is not None:
                traj.provenance.models[role] = str(getattr(lm, "model", ""))
        tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in by_model.values())
        with self._lock:
            self.tokens += tokens
        verdict = traj.verdict or Verdict(ok=False, reasons=["no verdict"], stage="parse", checks=1)
        context: dict[str, Any] = {k: item[k] for k in ("index", "persona", "env", "seed") if k in item}
        if "env" in item:
            context["success"] = bool(getattr(pred, "success", False))
        record = RunRecord(
            key=item["key"],
            accepted=verdict.ok,
            trajectory=traj.model_copy(update={"verdict": verdict}),
            attempts=attempts,
            usage=by_model,
            error=error,
            id=traj.id,
            **context,
            verdict=verdict.model_dump(mode="json"),
            lm_calls=usage.calls,
            seconds=round(s, 3),
        ).to_json()
        return Emit("accepted" if verdict.ok else "rejected", item["key"], record)

    def _trajectory(self, pred: Any, item: dict[str, Any], error: str | None) -> tuple[Trajectory, list[Any]]:
        from refine.data import Provenance, Script
        from refine.verify import verify_trajectory

        attempts = list(getattr(pred, "attempts", None) or []) if pred is not None else []
        traj = getattr(pred, "trajectory", None) if pred is not None else None
        if isinstance(traj, dict):
            traj = Trajectory.model_validate(traj)
        if not isinstance(traj, Trajectory):
            reason = error or "the program returned no trajectory"
            persona = item.get("persona", "")
            traj = Trajectory(
                script=Script(persona=persona, environment=item.get("env", ""), tasks=[], actions=[]),
                provenance=Provenance(persona=persona, seed=item["seed"]),
                verdict=Verdict(ok=False, reasons=[reason], stage="parse", checks=1),
            )
        elif traj.verdict is None:
            verdict = getattr(pred, "verdict", None)
            if not isinstance(verdict, Verdict):
                verdict = verify_trajectory(traj, min_refinements=self.min_refinements)
            traj = traj.model_copy(update={"verdict": verdict})
        return traj.model_copy(deep=True), [jsonable(a) for a in attempts]
