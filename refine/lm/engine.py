"""The in-process DSPy engine: micro-batched, grammar-constrained generation with a transformers model.

DSPy 3.4 calls `engine.complete(Request) -> Response` from many threads at once (`module.batch`, `dspy.Parallel`,
`Evaluate`). Each call is turned into a job and queued to one worker thread per model, which collects jobs for a few
milliseconds (up to `max_batch`), groups them by sampling settings, left-pads them and runs one `generate()` per group
on the process's compute thread (`refine.lm.compute`, where the model was loaded), then resolves every caller's
future. Each row starts from the KV cache of the longest cached prefix of its prompt (`refine.lm.kvcache`), so a
multi-turn agent only computes its new tokens each turn. Grammars (JSON schema from `response_format`, Lark from
`GrammarChatAdapter`) are enforced per row by `refine.lm.decoding.RowsProcessor`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, ClassVar, NamedTuple

from refine import interrupt
from refine.errors import LMError
from refine.lm.batcher import Batcher, Job, chat_messages, stop_on_interrupt, system_prefix_len
from refine.lm.batchkv import batched_cache, cache_kwarg, cache_of, layout, row_layers, spans
from refine.lm.decoding import RowsProcessor, grammar_for_request
from refine.lm.grammar import GrammarBounds
from refine.lm.loader import LoadedModel, load_model, resolve_quantize

__all__ = ["AsyncLocalEngine", "BatchRecord", "LocalEngine"]

logger = logging.getLogger(__name__)

_MIN_PREFIX = 16  # shorter cached prefixes are not worth a cache copy
_PAD_WASTE = 1.5  # prefill rows apart when padding would add more than half the uncached prompt tokens


class BatchRecord(NamedTuple):
    """One `generate()` call of the engine (kept in `LocalEngine.batches` for inspection and benchmarks).

    `prefix_tokens` counts the prompt tokens, over all rows, whose KV cache was reused instead of recomputed (each
    row's longest cached prefix: its previous turn, or the system turn; see `refine.lm.kvcache`). When the rows'
    uncached lengths are too uneven to pad to the longest, their prompts are computed before the batched decoding, in
    `prefill_passes` forward passes over buckets of similar lengths; `prefilled_rows` counts those rows.
    """

    size: int
    seconds: float
    prompt_tokens: int
    output_tokens: int
    grammar_rows: int
    grammar_seconds: float
    prefix_tokens: int = 0
    prefilled_rows: int = 0
    prefill_passes: int = 0


class LocalEngine:
    """DSPy engine running an HF causal LM in-process, with micro-batching and grammar-constrained decoding.

    The model is chosen by each request's model string (`embedded`, `local/<dir>`, `hf/<repo>`), so `LM.copy(model=...)`
    keeps working with the same engine (this is how a fine-tuned student is handed back). Models are loaded lazily,
    once per process, and shared between engines.

    Args:
        max_batch: most requests in one `generate()`; 1 disables batching.
        batch_wait_ms: how long the worker waits for one more request before running a batch (sliding window,
            at most 5 windows in all).
        default_max_tokens: generation limit when a request sets none.
        dtype: weights dtype (`float32`, `bfloat16`, `float16`; default `$REFINE_LM_DTYPE` or float32).
        quantize: weight-only quantized linears for float32 CPU models, `none`, `int8` or `int4` (default
            `$REFINE_LM_QUANT`, else `none`; see `refine.lm.quantize`).
        torch_threads: torch intra-op threads (default `$REFINE_TORCH_THREADS` or min(2, cpus)).
        bounds: caps injected into JSON schemas from `response_format`.
        keep_batches: how many `BatchRecord`s to keep in `batches`.

    Example:
        >>> import dspy
        >>> from refine.lm.engine import LocalEngine
        >>> lm = dspy.LM("embedded", engine=LocalEngine(max_batch=8), max_tokens=256)  # loads on first call
    """

    supports_response_schema = True
    supports_function_calling = False
    supported_params = frozenset({"response_format", "temperature", "max_tokens", "top_p", "top_k", "seed", "stop"})
    #: Read by `GrammarChatAdapter`: this engine enforces `metadata={"lark": ...}`.
    accepts_lark_grammar = True

    _shared: ClassVar[dict[tuple[Any, ...], LocalEngine]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        max_batch: int = 16,
        batch_wait_ms: float = 20.0,
        default_max_tokens: int = 512,
        dtype: str | None = None,
        torch_threads: int | None = None,
        bounds: GrammarBounds | None = None,
        keep_batches: int = 10_000,
        quantize: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise LMError(f"max_batch must be >= 1, got {max_batch}")
        if batch_wait_ms < 0:
            raise LMError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        if default_max_tokens < 1:
            raise LMError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        if quantize is not None:
            resolve_quantize(quantize)  # an unknown mode fails here, not on the first call
        self.max_batch = int(max_batch)
        self.batch_wait_ms = float(batch_wait_ms)
        self.default_max_tokens = int(default_max_tokens)
        self.dtype = dtype
        self.quantize = quantize
        self.torch_threads = torch_threads
        self.bounds = bounds or GrammarBounds()
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=keep_batches)
        self._batchers: dict[int, Batcher] = {}
        self._lock = threading.Lock()
        self._executor: Any = None
        self._ids = itertools.count()

    # -- construction helpers -------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments that define this engine (JSON-serializable)."""
        return {
            "max_batch": self.max_batch,
            "batch_wait_ms": self.batch_wait_ms,
            "default_max_tokens": self.default_max_tokens,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "torch_threads": self.torch_threads,
            "bounds": [self.bounds.max_text, self.bounds.max_string, self.bounds.max_items],
        }

    @classmethod
    def shared(cls, **config: Any) -> LocalEngine:
        """The process-wide engine with this configuration (created on first use), so LMs share one batch queue."""
        bounds = config.get("bounds")
        if isinstance(bounds, (list, tuple)):
            config["bounds"] = GrammarBounds(*bounds)
        probe = cls(**config)
        key = tuple(sorted((k, repr(v)) for k, v in probe.config().items()))
        with cls._shared_lock:
            return cls._shared.setdefault(key, probe)

    def dump_state(self) -> dict[str, Any]:
        """State saved with a program whose predictor has this engine's LM set (see `dspy.LM.dump_state`)."""
        return self.config()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        """Rebuild (or reuse) the shared engine described by `dump_state()`."""
        return cls.shared(**dict(state))

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalEngine:
        # Optimizers deepcopy programs; the engine (threads, loaded models) is a shared service, not program state.
        return self

    def __copy__(self) -> LocalEngine:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalEngine.load_state, (self.dump_state(),))

    def close(self) -> None:
        """Stop the worker threads (requests already queued are answered first)."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()

    # -- the DSPy engine contract ---------------------------------------------------------------------------------
    def complete(self, request: Any) -> Any:
        """Answer one DSPy request (blocks until its batch has run)."""
        return self.submit(request).result()

    def submit(self, request: Any) -> Future:
        """Queue a request and return a future of its `dspy.lm15.Response` (used by the async engine).

        Raises:
            LMError: when the request cannot be served (non-text content, tools, invalid grammar, context too long).
        """
        if interrupt.requested():
            raise LMError("Interrupted: the run is stopping, so no new LM call is started")
        if request.tools:
            raise LMError(
                "The in-process engine does no native function calling; use dspy.ReAct or a ChatAdapter without "
                "use_native_function_calling"
            )
        loaded = load_model(request.model, dtype=self.dtype, torch_threads=self.torch_threads, quantize=self.quantize)
        config = request.config
        max_new = int(config.max_tokens or self.default_max_tokens)
        messages = chat_messages(request)
        with loaded.tokenizer_lock:
            prompt_ids = loaded.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            prefix_len = system_prefix_len(loaded, messages, prompt_ids)
        limit = getattr(loaded.model.config, "max_position_embeddings", None)
        if limit and len(prompt_ids) + max_new > limit:
            raise LMError(
                f"Prompt of {len(prompt_ids)} tokens + max_tokens {max_new} exceeds the context of "
                f"{request.model} ({limit} tokens); shorten the inputs or lower max_tokens"
            )
        grammar = grammar_for_request(request, self.bounds)
        temperature = float(config.temperature or 0.0)
        sample_key = (
            temperature > 0,
            temperature if temperature > 0 else None,
            config.top_p if temperature > 0 else None,
            config.top_k if temperature > 0 else None,
            config.seed,
        )
        job = Job(request, Future(), loaded, list(prompt_ids), grammar, max_new, sample_key, prefix_len)
        self._batcher(loaded).queue.put(job)
        return job.future

    def _batcher(self, loaded: LoadedModel) -> Batcher:
        with self._lock:
            batcher = self._batchers.get(id(loaded))
            if batcher is None:
                batcher = self._batchers[id(loaded)] = Batcher(self, loaded)
            return batcher

    def _ll_executor(self) -> Any:
        with self._lock:
            if self._executor is None:
                import llguidance

                self._executor = llguidance.LLExecutor(num_threads=1)
            return self._executor

    def _run_batch(self, loaded: LoadedModel, jobs: list[Job]) -> None:
        import torch

        # Longest prompts first: rows of similar lengths sit together, so attention can skip the padding of each
        # group of rows (`refine.lm.attention`), and a split batch puts similar rows in the same chunk.
        jobs = sorted(jobs, key=lambda job: len(job.prompt_ids), reverse=True)
        for start in range(0, len(jobs), self.max_batch):
            chunk = jobs[start : start + self.max_batch]
            if interrupt.requested():  # stopping (Ctrl-C): the callers' items are abandoned, skip the work
                raise LMError("Interrupted: the run is stopping, so this LM call was cut short")
            results = self._generate(loaded, chunk, torch)
            if interrupt.requested():  # generation was cut at the next token: the answers are incomplete
                raise LMError("Interrupted: the run is stopping, so this LM call was cut short")
            for job, response in zip(chunk, results, strict=True):
                job.future.set_result(response)

    @staticmethod
    def _cached_prefix(loaded: LoadedModel, job: Job, torch: Any) -> tuple[int, Any]:
        """`(tokens reused, entry)` for one job: the longest cached prefix, else the system turn (computed now)."""
        store = loaded.prefix_cache
        if store.max_entries <= 0:
            return 0, None
        limit = len(job.prompt_ids) - 1  # generate() needs at least one prompt token to feed
        n, entry = store.lookup(job.prompt_ids, limit)
        if n < job.prefix_len and job.prefix_len >= _MIN_PREFIX:
            LocalEngine._prefill(loaded, [(job.prompt_ids[: job.prefix_len], 0, None)], torch)
            n, entry = store.lookup(job.prompt_ids, limit)
        return (n, entry) if n >= _MIN_PREFIX else (0, None)

    @staticmethod
    def _prefill(loaded: LoadedModel, rows: list[tuple[list[int], int, Any]], torch: Any) -> None:
        """One forward pass computing, for each `(tokens, n, entry)`, the KV cache of `tokens` from its first `n`
        cached in `entry`, and keeping it in the store.

        Same layout as the batched `generate()`: `[padding | cached tokens]` in the KV cache, `[padding | rest]` in
        the input, both right-aligned; position ids count real tokens only. No logits are needed beyond one position.
        """
        cached = max(n for _, n, _ in rows)
        input_ids, attention = layout([(tokens, n) for tokens, n, _ in rows], cached, loaded.pad_id, torch)
        input_ids = input_ids[:, cached:]  # the cached tokens are fed through the KV cache
        extra: dict[str, Any] = {}
        if cached:
            extra[cache_kwarg()] = batched_cache(
                [(n, entry) for _, n, entry in rows],
                cached,
                torch,
                config=loaded.model.config,
                capacity=attention.shape[1],
            )
        if len(rows) > 1:  # padded: positions from the mask (one row has none, and its default arange is faster)
            extra["attention_mask"] = attention
            extra["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)[:, cached:]
        output = loaded.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **extra)
        cache = cache_of(output)
        for row, (tokens, _, _) in enumerate(rows):
            loaded.prefix_cache.put(tokens, row_layers(cache, row, spans(attention[row].tolist()), torch))

    @staticmethod
    def _buckets(lengths: list[int]) -> list[list[int]]:
        """Indices grouped by similar `lengths` (ascending), so that padding each group to its longest adds at most
        half its tokens.

        Example:
            >>> LocalEngine._buckets([60, 300, 58, 70, 280, 5])
            [[5], [2, 0, 3], [4, 1]]
        """
        buckets: list[list[int]] = []
        total = 0
        for index in sorted(range(len(lengths)), key=lengths.__getitem__):
            length = lengths[index]
            if buckets and (len(buckets[-1]) + 1) * length <= _PAD_WASTE * (total + length):
                buckets[-1].append(index)
                total += length
            else:
                buckets.append([index])
                total = length
        return buckets

    @staticmethod
    def _row_tokens(loaded: LoadedModel, output: Any, row: int, width: int, max_new: int) -> tuple[list[int], str]:
        """A row's generated tokens up to (not including) its first EOS, and the finish reason."""
        tokens = output[row, width:].tolist()[:max_new]
        for index, token in enumerate(tokens):
            if token in loaded.eos_ids:
                return tokens[:index], "stop"
        return tokens, "length"

    @staticmethod
    def _keep_kv(
        loaded: LoadedModel,
        jobs: list[Job],
        attention: Any,
        cache: Any,
        width: int,
        rows_tokens: list[tuple[list[int], str]],
        torch: Any,
    ) -> None:
        """Store each row's KV cache (its prompt and the generated tokens the model has seen) for the next turn."""
        if cache is None or not getattr(cache, "layers", None):
            return
        seen = int(cache.get_seq_length()) - width  # generated tokens fed back (all but the last)
        for row, job in enumerate(jobs):
            fed = rows_tokens[row][0][: max(0, seen)]
            runs = spans(attention[row].tolist())
            if fed:  # the generated tokens follow the prompt's last one
                runs[-1] = (runs[-1][0], width + len(fed))
            loaded.prefix_cache.put([*job.prompt_ids, *fed], row_layers(cache, row, runs, torch))

    def _generate(self, loaded: LoadedModel, jobs: list[Job], torch: Any) -> list[Any]:
        from dspy.lm15 import Message, Response, Usage

        rows = len(jobs)
        grammars = [job.grammar for job in jobs]
        processor = RowsProcessor(
            loaded.ll_tokenizer() if any(grammars) else None,
            grammars,
            [job.max_new for job in jobs],
            loaded.vocab_size,
            loaded.eos_ids,
            self._ll_executor() if any(grammars) else None,
        )
        do_sample, temperature, top_p, top_k, seed = jobs[0].sample_key
        generation = copy.deepcopy(loaded.model.generation_config)
        generation.max_new_tokens = max(job.max_new for job in jobs)
        generation.do_sample = do_sample
        generation.temperature = temperature if do_sample else 1.0
        generation.top_p = top_p if (do_sample and top_p is not None) else 1.0
        generation.top_k = top_k if (do_sample and top_k is not None) else None
        generation.pad_token_id = loaded.pad_id
        generation.eos_token_id = list(loaded.eos_ids)
        generation.min_new_tokens = None  # would ban EOS even where the grammar allows nothing else
        generation.min_length = 0
        generation.return_dict_in_generate = True  # its KV cache is kept for the rows' next turns
        if seed is not None:
            torch.manual_seed(int(seed))
        started = time.perf_counter()
        with loaded.lock, torch.inference_mode():
            # Each row starts from the longest cached prefix of its prompt (its own previous turn, or the shared
            # system turn). Layout per row: [padding | cached tokens | padding | rest of the prompt], right-aligned
            # in both parts; the mask hides the padding, and position ids (cumsum of the mask) count real tokens only.
            parts = [self._cached_prefix(loaded, job, torch) for job in jobs]
            rests = [len(job.prompt_ids) - n for job, (n, _) in zip(jobs, parts, strict=True)]
            reused = sum(n for n, _ in parts)  # from earlier calls (rows prefilled below are not reuse)
            prefilled = passes = 0
            if rows > 1 and loaded.prefix_cache.max_entries > 0 and rows * max(rests) > _PAD_WASTE * sum(rests):
                # Uncached parts of very different lengths (an episode's first turn beside later ones): padding them
                # to the longest would multiply the prefill work, so prefill them into the store first, in buckets of
                # similar lengths; the batched generate() then feeds one token per row and batches the decoding.
                todo = [row for row, rest in enumerate(rests) if rest > 1]
                for bucket in self._buckets([rests[row] for row in todo]):
                    self._prefill(loaded, [(jobs[todo[i]].prompt_ids[:-1], *parts[todo[i]]) for i in bucket], torch)
                    passes += 1
                prefilled = len(todo)
                parts = [self._cached_prefix(loaded, job, torch) for job in jobs]
            cached = max(n for n, _ in parts)
            rows_in = [(job.prompt_ids, n) for job, (n, _) in zip(jobs, parts, strict=True)]
            input_ids, attention = layout(rows_in, cached, loaded.pad_id, torch)
            width = input_ids.shape[1]
            extra: dict[str, Any] = {}
            if cached:
                extra[cache_kwarg()] = batched_cache(
                    parts, cached, torch, config=loaded.model.config, capacity=width + generation.max_new_tokens
                )
            result = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=generation,
                logits_processor=[processor],
                stopping_criteria=[stop_on_interrupt()],
                **extra,
            )
            output = result.sequences
            rows_tokens = [self._row_tokens(loaded, output, row, width, job.max_new) for row, job in enumerate(jobs)]
            if loaded.prefix_cache.max_entries > 0:
                self._keep_kv(loaded, jobs, attention, cache_of(result), width, rows_tokens, torch)
        seconds = time.perf_counter() - started
        responses = []
        produced = 0
        for row, job in enumerate(jobs):
            tokens, finish = rows_tokens[row]
            with loaded.tokenizer_lock:
                text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
            stops = [text.find(s) for s in job.request.config.stop if s and s in text]
            if stops:
                text, finish = text[: min(stops)], "stop"
            if processor.limits.grammar_error[row] is not None:
                logger.warning("Row %d left its grammar: %s", row, processor.limits.grammar_error[row])
            produced += len(tokens)
            responses.append(
                Response(
                    id=f"refine-local-{next(self._ids)}",
                    model=job.request.model,
                    message=Message.assistant(text),
                    finish_reason=finish,
                    usage=Usage(input_tokens=len(job.prompt_ids), output_tokens=len(tokens)),
                )
            )
        self.batches.append(
            BatchRecord(
                size=rows,
                seconds=seconds,
                prompt_tokens=sum(len(job.prompt_ids) for job in jobs),
                output_tokens=produced,
                grammar_rows=sum(1 for g in grammars if g),
                grammar_seconds=processor.grammar_seconds,
                prefix_tokens=reused,
                prefilled_rows=prefilled,
                prefill_passes=passes,
            )
        )
        return responses


class AsyncLocalEngine:
    """Async counterpart of `LocalEngine` (pass as `dspy.LM(..., async_engine=...)`): awaits the same batched future.

    Args:
        engine: the sync engine whose queue and models are used.
    """

    supports_response_schema = True
    supports_function_calling = False
    supported_params = LocalEngine.supported_params
    accepts_lark_grammar = True

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    async def complete(self, request: Any) -> Any:
        """Answer one request without blocking the event loop (model loading runs in a worker thread)."""
        future = await asyncio.to_thread(self.engine.submit, request)
        return await asyncio.wrap_future(future)

    def dump_state(self) -> dict[str, Any]:
        """Same state as the sync engine."""
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLocalEngine:
        """Rebuild around the shared sync engine of this configuration."""
        return cls(LocalEngine.load_state(state))

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLocalEngine:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (AsyncLocalEngine.load_state, (self.dump_state(),))
