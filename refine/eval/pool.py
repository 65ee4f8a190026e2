"""How `refine eval` plays its episodes: the worker threads (which stop on Ctrl-C/SIGTERM), the per-episode
deadline, the start gate of the first wave, the pool of reusable environments, and the Ray work function. Used by
`refine.eval.evaluate`."""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from refine import interrupt
from refine.eval.config import EvalConfig, default_factory
from refine.eval.episode import run_episode

logger = logging.getLogger(__name__)


def timeout_error(seconds: float) -> str:
    """The error recorded for an episode abandoned at its deadline."""
    return f"EpisodeTimeout: the episode ran past its deadline of {seconds:g} s (--episode-timeout)"


def play_with_deadline(
    episode: Callable[[Callable[[], bool]], dict[str, Any]], timeout: float | None, name: str = "refine-episode"
) -> dict[str, Any] | None:
    """`episode(stop)` within `timeout` seconds: its record, or None when the deadline passed.

    The deadline bounds the episode's total time, which catches what no per-call timeout does (a server that trickles
    one byte now and then). The episode runs in a daemon thread; at the deadline it is abandoned: `stop()` turns True,
    so it ends at its next step, and whatever it returns is dropped. A stop request (Ctrl-C) abandons it the same way
    and raises `interrupt.Interrupted` here at once.
    """
    if timeout is None:
        return episode(interrupt.requested)
    abandoned = threading.Event()
    box: dict[str, Any] = {}

    def stop() -> bool:
        return abandoned.is_set() or interrupt.requested()

    def run() -> None:
        try:
            box["record"] = episode(stop)
        except BaseException as exc:  # handed to the waiting thread (or dropped with an abandoned episode)
            box["error"] = exc

    worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True, name=name)
    worker.start()
    deadline = time.monotonic() + timeout
    while worker.is_alive():
        if interrupt.requested():
            abandoned.set()
            raise interrupt.Interrupted()
        left = deadline - time.monotonic()
        if left <= 0:
            abandoned.set()
            return None
        worker.join(min(0.2, left))
    if "error" in box:
        raise box["error"]
    return box["record"]


def play_local(
    todo: list[dict[str, Any]], play: Callable[[dict[str, Any]], Any], workers: int, on_stop: Callable[[], None]
) -> None:
    """Play `todo` in `workers` threads (each in a copy of the caller's context, so `dspy.context` reaches them).

    On Ctrl-C/SIGTERM (`KeyboardInterrupt` in this, the main thread) nothing new starts, `on_stop()` runs (the start
    gate lets its waiters go), the running episodes are abandoned at their next step (the in-process engine ends its
    `generate()` at the next token), and once they returned the in-process engine is drained before re-raising.
    """
    it = iter(todo)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refine-eval") as pool:
        running: set[Any] = set()
        try:
            while True:
                # A bounded window instead of submitting everything: a stop request leaves nothing queued to finish.
                for spec in it:
                    running.add(pool.submit(contextvars.copy_context().run, play, spec))
                    if len(running) >= workers * 2:
                        break
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()
        except KeyboardInterrupt:
            interrupt.request()
            on_stop()
            pool.shutdown(wait=True, cancel_futures=True)
            interrupt.settle()  # the engine finishes its cut-short batch; later calls in this process run normally
            raise
        except BaseException:  # the run itself failed (it cannot write, ...): start none of the queued episodes
            on_stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


class StartGate:
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


class EnvPool:
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


class _EpisodeWork:
    """The Ray work function of `evaluate`: each worker process builds the agent and its environments once."""

    def __init__(
        self, agent_factory: Callable[[], Any], config: EvalConfig, env_factory: Callable[[str, bool], Any] | None
    ) -> None:
        self.agent_factory = agent_factory
        self.config = config
        self.env_factory = env_factory
        self._agent: Any = None
        self._pool: EnvPool | None = None
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
                self._pool = EnvPool(self.env_factory or default_factory(self.config, self._agent))
        from refine.errors import LMError

        pool = self._pool

        def episode(stop: Callable[[], bool]) -> dict[str, Any]:
            env = pool.acquire(spec["env"], spec["variant"])
            try:
                return run_episode(self._agent, env, spec, self.config.max_steps, stop=stop)
            finally:
                pool.release(spec["env"], spec["variant"], env)

        rec = play_with_deadline(episode, self.config.episode_timeout)
        if rec is None or rec.get("lm_failed"):  # no result: the executor records the error, --resume replays it
            raise LMError(timeout_error(self.config.episode_timeout or 0) if rec is None else rec["error"])
        rec["held_in"] = spec["env"] in set(self.config.held_in)
        rec["model"] = self.config.model or str(getattr(self._agent, "model", "") or "")
        return [Emit("episodes", spec["key"], rec)]


def play_on_ray(
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
        if on_episode is not None and outcome.status == "failed":  # recorded in errors.jsonl, pending for resume
            on_episode({"key": outcome.key, "error": outcome.error, "pending": True})
        elif on_episode is not None and outcome.status != "skipped":
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
