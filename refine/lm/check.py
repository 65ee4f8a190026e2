"""`run_check`: load an LM, answer one typed question with it, and measure load time and generation speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from refine.errors import LMError, LMOutputError

__all__ = ["CheckReport", "NextStep", "run_check"]


class NextStep(dspy.Signature):
    """Read the situation of a household agent and plan its next step."""

    situation: str = dspy.InputField(desc="what the agent sees and what it must achieve")
    next_action: str = dspy.OutputField(desc="one short imperative command, e.g. 'open fridge 1'")
    difficulty: Literal["easy", "medium", "hard"] = dspy.OutputField()
    needs_tool: bool = dspy.OutputField(desc="whether a tool or appliance is needed")
    steps_left: int = dspy.OutputField(desc="estimated number of remaining steps")


@dataclass(frozen=True)
class CheckReport:
    """Result of `run_check`.

    Attributes:
        answer: the parsed output fields.
        load_seconds: time to load the model (0 for remote LMs and models already loaded in this process).
        answer_seconds: wall time of the structured call.
        output_tokens: completion tokens reported by the LM.
        adapter: name of the adapter class used.
    """

    answer: dict[str, Any]
    load_seconds: float
    answer_seconds: float
    output_tokens: int
    adapter: str

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of the structured call."""
        return self.output_tokens / self.answer_seconds if self.answer_seconds > 0 else 0.0


def run_check(model: str, prompt: str, max_tokens: int = 256, api_base: str | None = None) -> CheckReport:
    """Answer `NextStep` for `prompt` with `model` (uncached) and report timings.

    Raises:
        LMError: when the model cannot be loaded or called.
        LMOutputError: when the answer does not parse into the typed fields.
    """
    from refine.lm.adapter import default_adapter
    from refine.lm.loader import is_local_model, load_model
    from refine.lm.resolve import resolve_lm

    kwargs: dict[str, Any] = {"max_tokens": max_tokens, "cache": False}
    if api_base:
        kwargs["api_base"] = api_base
    lm = resolve_lm(model, **kwargs)
    load_seconds = 0.0
    if is_local_model(model):
        started = time.perf_counter()
        loaded = load_model(lm.model, dtype=lm.engine.dtype, torch_threads=lm.engine.torch_threads)
        loaded.ll_tokenizer()
        load_seconds = time.perf_counter() - started
    adapter = default_adapter(lm)
    started = time.perf_counter()
    try:
        with dspy.context(lm=lm, adapter=adapter, track_usage=True):
            prediction = dspy.Predict(NextStep)(situation=prompt)
    except dspy.utils.exceptions.AdapterParseError as exc:
        raise LMOutputError(f"{model} answered, but the answer did not parse into NextStep: {exc}") from exc
    except LMError:
        raise
    except Exception as exc:
        raise LMError(f"Calling {model} failed: {type(exc).__name__}: {exc}") from exc
    answer_seconds = time.perf_counter() - started
    usage = prediction.get_lm_usage() or {}
    output_tokens = sum(int(u.get("completion_tokens") or 0) for u in usage.values())
    answer = {name: prediction[name] for name in NextStep.output_fields}
    return CheckReport(answer, load_seconds, answer_seconds, output_tokens, type(adapter).__name__)
