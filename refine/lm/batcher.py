"""The engine's request side: turning a DSPy request into a queued job, and the worker thread that collects jobs into
batches and runs them on the compute thread (used by `refine.lm.engine`).
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from refine import interrupt
from refine.errors import LMError
from refine.lm.compute import run_on_compute_thread
from refine.lm.loader import LoadedModel

if TYPE_CHECKING:
    from refine.lm.engine import LocalEngine

__all__ = ["Batcher", "Job", "chat_messages", "stop_on_interrupt", "system_prefix_len"]

logger = logging.getLogger("refine.lm.engine")

_STOP = object()
_MAX_WAIT_FACTOR = 5


@dataclass
class Job:
    """One queued request: its prompt, grammar and sampling settings, and the future its caller waits on."""

    request: Any
    future: Future
    loaded: LoadedModel
    prompt_ids: list[int]
    grammar: str | None
    max_new: int
    sample_key: tuple[Any, ...]
    prefix_len: int
    queued_at: float = field(default_factory=time.perf_counter)


def _text_of(content: Any, what: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        text = getattr(part, "text", None)
        if text is None:
            raise LMError(f"The in-process engine handles text only; the {what} has a {type(part).__name__} part")
        texts.append(text)
    return "\n".join(texts)


def chat_messages(request: Any) -> list[dict[str, str]]:
    """The request's system prompt and messages as chat-template messages (text only)."""
    messages: list[dict[str, str]] = []
    system = _text_of(request.system, "system prompt")
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        text = message.text
        if text is None:
            raise LMError(f"The in-process engine handles text only; a {message.role} message has non-text parts")
        role = {"developer": "system", "tool": "user"}.get(message.role, message.role)
        messages.append({"role": role, "content": text})
    return messages


def system_prefix_len(loaded: LoadedModel, messages: list[dict[str, str]], prompt_ids: list[int]) -> int:
    """Length of the system turn's tokens when they are a prefix of the prompt (their KV cache can be reused)."""
    if loaded.prefix_cache_entries <= 0 or not messages or messages[0]["role"] != "system":
        return 0
    system_ids = loaded.tokenizer.apply_chat_template(
        messages[:1], add_generation_prompt=False, tokenize=True, return_dict=False
    )
    n = len(system_ids)
    # Keep at least one prompt token outside the prefix: generate() needs a token to feed.
    return n if 0 < n < len(prompt_ids) and prompt_ids[:n] == list(system_ids) else 0


@functools.cache
def stop_on_interrupt() -> Any:
    """A transformers stopping criterion that ends every row at the next token once a stop was requested (Ctrl-C)."""
    import torch
    from transformers import StoppingCriteria

    class StopOnInterrupt(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), interrupt.requested(), dtype=torch.bool, device=input_ids.device)

    return StopOnInterrupt()


class Batcher:
    """The queue and worker thread of one (engine, model) pair."""

    def __init__(self, engine: LocalEngine, loaded: LoadedModel) -> None:
        self.engine = engine
        self.loaded = loaded
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"refine-lm-batcher-{loaded.source.kind}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(_STOP)

    def _collect(self) -> tuple[list[Job], bool]:
        first = self.queue.get()
        if first is _STOP:
            return [], True
        jobs = [first]
        # Sliding window: wait `batch_wait_ms` after the latest arrival (callers of one `module.batch` arrive a few ms
        # apart on a busy CPU), but never more than `_MAX_WAIT_FACTOR` windows in all.
        window = self.engine.batch_wait_ms / 1000.0
        hard_deadline = time.perf_counter() + window * _MAX_WAIT_FACTOR
        deadline = time.perf_counter() + window
        while len(jobs) < self.engine.max_batch:
            remaining = min(deadline, hard_deadline) - time.perf_counter()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            deadline = time.perf_counter() + window
        return jobs, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            jobs, stopping = self._collect()
            groups: dict[tuple[Any, ...], list[Job]] = collections.defaultdict(list)
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    groups[job.sample_key].append(job)
            for group in groups.values():
                try:  # on the compute thread, where the model was loaded (see refine.lm.compute)
                    run_on_compute_thread(self.engine._run_batch, self.loaded, group)
                except Exception as exc:  # the worker must survive; every caller gets the error
                    if not interrupt.requested():  # a run that is stopping cuts its batches short on purpose
                        logger.exception("Batched generation failed for %d requests", len(group))
                    error = exc if isinstance(exc, LMError) else LMError(f"In-process generation failed: {exc}")
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(error)
