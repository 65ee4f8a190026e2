"""A `dspy.Provider` that fine-tunes local models with TRL, so DSPy's own `BootstrapFinetune` works offline.

DSPy's built-in local provider launches models through sglang and calls TRL APIs that TRL 1.16 removed. This one
trains in-process with `refine.distill.distill` and returns ``local/<checkpoint>``, which the in-process engine of
`refine.lm.get_lm` loads lazily, so ``lm.copy(model=...)`` (what BootstrapFinetune does) just works.

    >>> from refine.lm import get_lm
    >>> lm = get_lm("embedded", provider=TRLProvider())  # doctest: +SKIP
    >>> ft = dspy.BootstrapFinetune(metric=m, train_kwargs={"max_steps": 50}).compile(student, trainset=train,
    ...                                                                              teacher=teacher)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dspy

from refine.errors import TrainingError

__all__ = ["TRLProvider", "TRLTrainingJob", "base_from_model_string"]

logger = logging.getLogger(__name__)


def base_from_model_string(model: str) -> str | None:
    """``embedded`` -> None (the embedded default), ``local/<dir>``/``hf/<repo>``/a folder -> that path or repo."""
    if model == "embedded":
        return None
    for prefix in ("local/", "hf/"):
        if model.startswith(prefix):
            return model.removeprefix(prefix)
    return model


class TRLTrainingJob(dspy.TrainingJob):
    """A fine-tuning job running in DSPy's worker thread; `status()` follows the future's state."""

    def status(self) -> str:
        if self.cancelled():
            return "cancelled"
        if not self.done():
            return "running"
        return "failed" if self.exception() is not None else "succeeded"


class TRLProvider(dspy.Provider):
    """Fine-tune in-process models (``embedded``, ``local/<dir>``) with TRL; returns ``local/<student dir>``.

    Args:
        out_root: Where students are written when ``train_kwargs`` has no ``out`` (default: the refine cache).
        defaults: `DistillConfig` fields applied before each job's ``train_kwargs``.
    """

    def __init__(self, out_root: str | Path | None = None, **defaults: Any) -> None:
        super().__init__()
        self.finetunable = True
        self.TrainingJob = TRLTrainingJob
        self.out_root = Path(out_root) if out_root else None
        self.defaults = defaults

    @staticmethod
    def is_provider_model(model: str) -> bool:
        return model == "embedded" or model.startswith("local/")

    def finetune(  # type: ignore[override]  # dspy calls it on the instance: self.provider.finetune(...)
        self,
        job: TRLTrainingJob,
        model: str,
        train_data: list[dict[str, Any]],
        train_data_format: Any,
        train_kwargs: dict[str, Any] | None = None,
    ) -> str:
        from refine.data import content_id
        from refine.distill.config import DistillConfig
        from refine.distill.trainer import distill

        fmt = getattr(train_data_format, "value", train_data_format)
        if fmt not in (None, "chat"):
            raise TrainingError(f"TRLProvider trains chat data only (rows with 'messages'), got format {fmt!r}")
        kwargs = {**self.defaults, **(train_kwargs or {})}
        if "num_train_epochs" in kwargs:  # DSPy/HF spelling
            kwargs["epochs"] = kwargs.pop("num_train_epochs")
        if "per_device_train_batch_size" in kwargs:
            kwargs["batch_size"] = kwargs.pop("per_device_train_batch_size")
        out = kwargs.pop("out", None)
        if out is None:
            root = self.out_root
            if root is None:
                from refine.lm.embedded import cache_root

                root = cache_root() / "students"
            out = root / content_id([model, train_data, sorted(kwargs.items())], length=12)
        kwargs.setdefault("base", base_from_model_string(model))
        if kwargs.get("lora"):
            kwargs["merge_lora"] = True  # the returned model string must load as a plain checkpoint
        try:
            cfg = DistillConfig(out=Path(out), **kwargs)
        except ValueError as exc:
            raise TrainingError(f"invalid train_kwargs for TRLProvider: {exc}") from exc
        rows = [{"id": str(i), "messages": r["messages"], "provenance": {}} for i, r in enumerate(train_data)]
        result = distill(rows, cfg, source=f"dspy BootstrapFinetune ({len(rows)} examples from {model})")
        logger.info("TRLProvider trained %s in %d steps", result.out, result.steps)
        return result.model_string
