"""Synthesis runs: a refinement program over many personas, in parallel, into a resumable run directory.

Each item is (index, persona, seed) with a stable key, so a killed run resumed with the same settings neither loses
nor duplicates a record. The program (by default `AgentRefinePipeline`) returns a verified `Trajectory`; accepted
ones go to `accepted.jsonl`, the others (with every reason, parse failures included) to `rejected.jsonl`. The
manifest totals LM calls, tokens, and tokens per accepted trajectory per model.

Each item is a distinct sample: its seed goes into every LM request (`rollout_id`, and the `seed` sampling option
when the LM samples), so items of one persona never share a cached answer and a resumed item gets its own answers
back from the cache. An item whose LM calls fail on transport (timeouts, rate limits, server or connection errors,
its deadline) is retried with backoff and then left pending in `errors.jsonl`, not rejected: `--resume` retries it.
Only content failures (unparseable output, verifier reasons) are rejections.

Example:
    >>> from refine.synth import plan_items
    >>> [(it["persona"], it["seed"]) for it in plan_items(["a baker", "a sailor"], n=3, seed=0)]
    [('a baker', 0), ('a sailor', 1), ('a baker', 2)]
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from pydantic import BaseModel, ConfigDict, Field

from refine.data import RunRecord, Trajectory, Verdict, content_id
from refine.errors import ConfigError, LMError
from refine.imports import PY_PREFIX, load_py_lm

__all__ = [
    "SynthConfig",
    "SynthWork",
    "TransientLMError",
    "is_transient",
    "plan_items",
    "resolve_lm",
    "run_synth",
    "synth_totals",
]

logger = logging.getLogger(__name__)

LOCAL_MAX_TOKENS = 2048
_PROGRAM_OPTIONS = {"agentrefine": ("max_attempts", "min_refinements")}
DEFAULT_TIMEOUT_S = 60.0
RETRY_BACKOFF_S = 1.0
"""First pause before an item that failed on transport is redone (then doubled, with jitter)."""


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


class SynthConfig(BaseModel):
    """Settings of a synthesis run; one class for the Python API and `refine synth`. Stored in the manifest."""

    model_config = ConfigDict(extra="forbid")

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


def resolve_lm(spec: str, **kwargs: Any) -> Any:
    """Build the LM named by `spec`: `py:package.module:factory` (`refine.imports.load_py_lm`: a factory called with
    `kwargs` or a dspy LM object, e.g. a fake LM for tests), else `refine.lm.get_lm(spec, **kwargs)` ('embedded',
    'local/<dir>', any LiteLLM model string)."""
    if spec.startswith(PY_PREFIX):
        return load_py_lm(spec, **kwargs)
    try:
        from refine.lm import get_lm, is_local_model
    except ImportError as exc:  # pragma: no cover - refine.lm ships with the package
        raise LMError(f"refine.lm is unavailable ({exc}); cannot build LM {spec!r}.") from None
    if is_local_model(spec):
        # A whole script or trajectory is one JSON answer: the grammar bounds of the signatures keep it under this.
        kwargs.setdefault("max_tokens", LOCAL_MAX_TOKENS)
    return get_lm(spec, **kwargs)


class _StructureCachingChatAdapter(dspy.ChatAdapter):
    """DSPy's ChatAdapter, formatting each signature's field structure once instead of on every call.

    The structure block embeds the pydantic JSON schema of every typed field, which DSPy rebuilds per call: about a
    third of the client CPU of a synthesis item, and the GIL-bound part that caps many-thread throughput to a server.
    It depends only on the signature's fields, so it is cached per signature class (optimizers make new classes).
    """

    def format_field_structure(self, signature: Any) -> str:
        cached = _STRUCTURES.get(signature)
        if cached is None:
            cached = super().format_field_structure(signature)
            _STRUCTURES[signature] = cached
        return cached


_STRUCTURES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _adapter_for(lm: Any) -> Any:
    try:
        from refine.lm import default_adapter
    except ImportError:  # pragma: no cover
        return None
    adapter = default_adapter(lm)
    if type(adapter) is dspy.ChatAdapter:
        return _StructureCachingChatAdapter(
            callbacks=adapter.callbacks, use_json_adapter_fallback=adapter.use_json_adapter_fallback
        )
    return adapter


class _CallCounter(BaseCallback):
    """A DSPy callback counting LM calls (and failed calls) per model for one item, and its transport failures."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = defaultdict(int)
        self.failures: dict[str, int] = defaultdict(int)
        self.retried: dict[str, int] = defaultdict(int)
        self.transient: list[str] = []
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self._models[call_id] = str(getattr(instance, "model", "lm"))

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            model = self._models.pop(call_id, "lm")
            self.calls[model] += 1
            if exception is not None:
                self.failures[model] += 1
                if is_transient(exception):
                    self.transient.append(f"{type(exception).__name__}: {exception}")

    def on_retry(self, model: str) -> None:
        with self._lock:
            self.retried[model] += 1


# The counter of the item running in this context: DSPy's retry loop (below the callbacks) reports each retry to it.
_ITEM_COUNTER: contextvars.ContextVar[_CallCounter | None] = contextvars.ContextVar("refine_item_counter", default=None)
_RETRY_HOOK_LOCK = threading.Lock()


def _install_retry_hook() -> None:
    """Count the retries DSPy makes inside one LM call (rate limits, 5xx, timeouts), which no callback sees.

    DSPy 3.4 sleeps `_delay(exc, attempt)` seconds before each retry; wrapping it is the only place a retry shows.
    Without the hook (another DSPy version) retries are simply not counted.
    """
    try:
        from dspy.clients import execution
    except ImportError:  # pragma: no cover
        return
    with _RETRY_HOOK_LOCK:
        original = getattr(execution, "_delay", None)
        if original is None or getattr(original, "_refine_hook", False):
            return

        def _delay(exc: Any, attempt: int) -> Any:
            counter = _ITEM_COUNTER.get()
            if counter is not None:
                counter.on_retry(str(getattr(exc, "model", "") or "lm"))
            return original(exc, attempt)

        _delay._refine_hook = True  # type: ignore[attr-defined]
        execution._delay = _delay


def _usage_of(pred: Any, counter: _CallCounter) -> dict[str, dict[str, int]]:
    usage: dict[str, dict[str, int]] = {}
    raw = {}
    try:
        raw = pred.get_lm_usage() or {}
    except Exception:  # usage tracking is best effort; a missing tracker must not fail the item
        raw = {}
    for model, u in raw.items():
        usage[model] = {
            "prompt_tokens": int((u or {}).get("prompt_tokens") or 0),
            "completion_tokens": int((u or {}).get("completion_tokens") or 0),
        }
    for model, n in counter.calls.items():
        usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0})["calls"] = n
        if counter.failures.get(model):
            usage[model]["failed_calls"] = counter.failures[model]
    retried = sum(counter.retried.values())
    if retried:  # DSPy's exceptions rarely name the model: the retries go to the item's (first) model
        model = next(iter(usage), "lm")
        usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0})["retried_calls"] = retried
    return usage


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


def _warm_up(lm: Any) -> None:
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


class SynthWork:
    """The per-item work function of a synthesis run (picklable: the program is built lazily in each process).

    Args:
        program: a program spec (built-in name, 'module:attr', saved dir) or a compiled program object.
        options: options for built-in program factories (max_attempts, min_refinements).
        min_refinements: used to re-verify trajectories that a custom program returns without a verdict.
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
    ):
        self.program_spec = program
        self.options = dict(options or {})
        self.min_refinements = min_refinements
        self.retries = retries
        self.item_timeout = item_timeout
        self.backoff_s = backoff_s
        self.trust = tuple(trust)
        self._program: Any = None if isinstance(program, str) else program
        self._lock = threading.Lock()
        self._hash: str | None = None
        self.tokens = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_program"] = None if isinstance(self.program_spec, str) else self._program
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
        with self._lock:
            if self._program is None:
                self._program = load_program(self.program_spec, self.options, self.trust)
            return self._program

    def _run_once(self, program: Any, item: dict[str, Any], overrides: dict[str, Any]) -> tuple[Any, str | None, str]:
        """One run of the program on the item: (prediction, program error, transport failure or '')."""
        import dspy

        counter: _CallCounter = overrides["callbacks"][-1]
        counter.transient.clear()
        box: dict[str, Any] = {}

        def run() -> None:
            token = _ITEM_COUNTER.set(counter)
            try:
                with dspy.context(**overrides):
                    box["pred"] = program(persona=item["persona"], seed=item["seed"])
            except Exception as exc:  # a program crash is a rejected record with its reason, never a dead run
                box["error"] = exc
            finally:
                _ITEM_COUNTER.reset(token)

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
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"
            if is_transient(exc):
                return None, error, error
            from refine.store import scrub_secrets

            logger.warning("item %s: program failed: %s", item["key"], scrub_secrets(error))
            return None, error, ""
        pred = box.get("pred")
        accepted = bool(getattr(getattr(getattr(pred, "trajectory", None), "verdict", None), "ok", False))
        # A transport failure only matters when the item did not come out accepted anyway.
        return pred, None, (counter.transient[-1] if counter.transient and not accepted else "")

    def __call__(self, item: dict[str, Any]) -> list[Any]:
        import dspy

        from refine.executor import Emit

        program = self.program
        counter = _CallCounter()
        lm = dspy.settings.lm
        item_lm = _item_lm(lm, item["seed"])
        overrides: dict[str, Any] = {"track_usage": True, "callbacks": [*dspy.settings.callbacks, counter]}
        if item_lm is not None:
            overrides["lm"] = item_lm
        adapter = _adapter_for(lm) if lm is not None and dspy.settings.adapter is None else None
        if adapter is not None:
            overrides["adapter"] = adapter
        t0 = time.perf_counter()
        for attempt in range(self.retries + 1):
            pred, error, transient = self._run_once(program, item, overrides)
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
                    f"{sum(counter.calls.values())} LM calls, {sum(counter.failures.values())} failed. "
                    "Left pending: rerun with --resume."
                )
            )
        usage = _usage_of(pred, counter) if pred is not None else _usage_of(None, counter)
        traj, attempts = self._trajectory(pred, item, error)
        traj.provenance.usage = usage
        traj.provenance.program_hash = self.program_hash
        traj.provenance.seed = item["seed"]
        traj.provenance.persona = traj.provenance.persona or item["persona"]
        for role, model in list(traj.provenance.models.items()):
            if not model and lm is not None:
                traj.provenance.models[role] = str(getattr(lm, "model", ""))
        tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())
        with self._lock:
            self.tokens += tokens
        verdict = traj.verdict or Verdict(ok=False, reasons=["no verdict"], stage="parse", checks=1)
        record = RunRecord(
            key=item["key"],
            accepted=verdict.ok,
            trajectory=traj.model_copy(update={"verdict": verdict}),
            attempts=attempts,
            usage=usage,
            error=error,
            id=traj.id,
            index=item["index"],
            persona=item["persona"],
            seed=item["seed"],
            verdict=verdict.model_dump(mode="json"),
            lm_calls=sum(counter.calls.values()),
            seconds=round(time.perf_counter() - t0, 3),
        ).to_json()
        return [Emit("accepted" if verdict.ok else "rejected", item["key"], record)]

    def _trajectory(self, pred: Any, item: dict[str, Any], error: str | None) -> tuple[Trajectory, list[Any]]:
        from refine.data import Provenance, Script
        from refine.verify import verify_trajectory

        attempts = list(getattr(pred, "attempts", None) or []) if pred is not None else []
        traj = getattr(pred, "trajectory", None) if pred is not None else None
        if isinstance(traj, dict):
            traj = Trajectory.model_validate(traj)
        if not isinstance(traj, Trajectory):
            reason = error or "the program returned no trajectory"
            traj = Trajectory(
                script=Script(persona=item["persona"], environment="", tasks=[], actions=[]),
                provenance=Provenance(persona=item["persona"], seed=item["seed"]),
                verdict=Verdict(ok=False, reasons=[reason], stage="parse", checks=1),
            )
        elif traj.verdict is None:
            traj = traj.model_copy(update={"verdict": verify_trajectory(traj, min_refinements=self.min_refinements)})
        return traj.model_copy(deep=True), [_jsonable(a) for a in attempts]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def load_program(spec: Any, options: dict[str, Any] | None = None, trust: Sequence[str] = ()) -> Any:
    """A compiled program from a spec; built-in names get `options` (max_attempts, min_refinements). `trust`: the
    `module:attr` programs a saved program directory may name."""
    from refine.graph import GraphModule, ProgramGraph
    from refine.programs_registry import load_program as _load

    if not isinstance(spec, str):
        return spec.compile() if isinstance(spec, ProgramGraph) else spec
    if spec == "interactive":
        raise ConfigError(
            "The interactive program starts from a script or an environment, not a persona, so `refine synth` cannot "
            "run it; use refine.programs.InteractiveRefine from Python, or --program agentrefine."
        )
    allowed = _PROGRAM_OPTIONS.get(spec, ())
    opts = {k: v for k, v in (options or {}).items() if k in allowed}
    program = _load(spec, trust=trust, **opts)
    if isinstance(program, ProgramGraph):
        program = program.compile()
    if isinstance(program, GraphModule):
        missing = [i for i in program.graph.inputs if i not in ("persona", "seed") and i not in program.graph.defaults]
        if missing:
            raise ConfigError(
                f"Program {spec!r} needs inputs {missing}; `refine synth` calls programs with persona= and seed= only. "
                "Use a program that starts from a persona (e.g. agentrefine)."
            )
    return program


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


def _is_local(spec: str) -> bool:
    try:
        from refine.lm import is_local_model
    except ImportError:  # pragma: no cover
        return False
    return bool(is_local_model(spec))


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
        "tokens": sum(u["prompt_tokens"] + u["completion_tokens"] for u in per_model.values()),
        "per_model": dict(per_model),
        "tokens_per_accepted": tokens_per_accepted,
    }


def run_synth(
    config: SynthConfig,
    out: str | Path,
    *,
    resume: bool = False,
    lm: Any = None,
    program: Any = None,
    progress: Callable[[Any, dict[str, int]], None] | None = None,
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
        progress: `progress(outcome, counts)` after each item; counts has accepted/rejected/failed/tokens.
        executor: "local" (threads) or "ray" (Ray tasks; each worker process builds its own LM from `config.lm`
            and the program from `config.program`, so both must be specs, not objects).
        ray_address: the Ray cluster to join with executor="ray" (default: start one here).

    Raises:
        ConfigError, RunStoreError, LMError: with a message that says how to fix the problem.
    """
    import dspy

    from refine.executor import WorkerLM, run_items
    from refine.personas import load_personas
    from refine.store import RunStore

    personas = load_personas(config.personas)
    items = plan_items(personas, config.n, config.seed)
    options = {"max_attempts": config.max_attempts, "min_refinements": config.min_refinements}
    remote = not config.lm.startswith(PY_PREFIX) and not _is_local(config.lm)
    lm_kwargs: dict[str, Any] = {"timeout": config.timeout} if remote and config.timeout else {}
    item_timeout = config.item_timeout
    if item_timeout is None and remote and config.timeout:
        item_timeout = config.timeout * 2 * config.max_attempts
    work = SynthWork(
        program if program is not None else config.program,
        options,
        config.min_refinements,
        retries=config.retries,
        item_timeout=item_timeout,
        trust=config.trust_program,
    )
    if executor == "ray" and (lm is not None or program is not None):
        raise ConfigError("With --executor ray the LM and the program are given as specs (config.lm, config.program).")
    # With Ray only the workers need the LM: the driver may be a small head node without the model.
    the_lm = lm if lm is not None else (None if executor == "ray" else resolve_lm(config.lm, **lm_kwargs))
    worker_lm: Any = (
        WorkerLM(config.lm, factory="refine.synth:resolve_lm", **lm_kwargs) if executor == "ray" else the_lm
    )
    _register_lm_secrets(the_lm)
    _install_retry_hook()
    _warm_up(the_lm)
    phash = work.program_hash
    counts = {"accepted": 0, "rejected": 0, "failed": 0, "skipped": 0, "tokens": 0}
    lock = threading.Lock()

    def on_item(outcome: Any) -> None:
        with lock:
            if outcome.status == "skipped":
                counts["skipped"] += 1
            elif outcome.status == "failed":
                counts["failed"] += 1
            else:
                for kind in ("accepted", "rejected"):
                    counts[kind] += outcome.written.get(kind, 0)
            if executor == "ray":  # the workers' SynthWork copies count tokens; the records carry them here
                usage = outcome.info.get("usage") or {}
                counts["tokens"] += sum(
                    u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values()
                )
            else:
                counts["tokens"] = work.tokens
            snapshot = dict(counts)
        if progress is not None:
            progress(outcome, snapshot)

    run_config = {**config.model_dump(), "personas_sha256": content_id(personas)}
    _check_personas_unchanged(Path(out), run_config["personas_sha256"], config.personas, resume, run_config)
    with RunStore(out, config=run_config, resume=resume, program_hash=phash) as store:
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
                outcome_fields=("usage",),
            )
        totals = synth_totals([*store.records("accepted"), *store.records("rejected")])
        totals["pending"] = summary.pending + kept
        totals["errors"] = store.count("errors")
        if totals["pending"] == 0:
            store.finish(totals=totals)
        else:  # failed items stay pending: a resumed run retries them
            store.update_manifest(status="incomplete", totals=totals)
    return totals
