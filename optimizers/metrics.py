"""Metrics for optimizing refinement programs: the rule-based verifier as a DSPy metric, per-stage metrics, and
helpers that turn any user function into the metric shape each DSPy optimizer expects.

`verifier_metric` (from `refine.verify`) is the verifier as a metric; the others score one stage or another kind
of program. Every metric here has GEPA's five-argument signature
`(gold, pred, trace=None, pred_name=None, pred_trace=None)` and returns
`dspy.Prediction(score=float in [0, 1], feedback=str)`; the optimize runner passes GEPA the feedback and the other
optimizers the score.

Example:
    >>> import dspy
    >>> from refine.data import Verdict
    >>> pred = dspy.Prediction(verdict=Verdict(ok=False, reasons=["no fix episode"], checks=4))
    >>> verdict_metric(dspy.Example(), pred).score
    0.75
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import dspy

from refine.data import Script, Verdict
from refine.errors import ConfigError
from refine.imports import import_object
from refine.verify import verifier_metric

__all__ = [
    "METRICS",
    "Metric",
    "as_feedback_metric",
    "default_metric_for",
    "episode_metric",
    "label_match_metric",
    "resolve_metric",
    "script_metric",
    "trajectory_metric",
    "verdict_metric",
    "verifier_metric",
]

logger = logging.getLogger(__name__)

Metric = Callable[..., Any]


def _result(score: float, feedback: str) -> dspy.Prediction:
    return dspy.Prediction(score=float(max(0.0, min(1.0, score))), feedback=feedback)


def _get(pred: Any, name: str) -> Any:
    if pred is None:
        return None
    if isinstance(pred, Mapping):
        return pred.get(name)
    try:
        return pred.get(name) if hasattr(pred, "get") else getattr(pred, name, None)
    except Exception:  # a Prediction without the key may raise on attribute access
        return None


def _failed_run(pred: Any, what: str) -> dspy.Prediction:
    err = _get(pred, "error")
    reason = f"The program produced no {what}" + (f" ({err})." if err else ".")
    return _result(0.0, reason + f" Make sure every step returns a well-formed {what}.")


def _verdict_result(verdict: Verdict) -> dspy.Prediction:
    return _result(verdict.score, verdict.feedback())


def script_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """Script validity: `refine.verify.verify_script` on the prediction's script (score = fraction of checks passed).

    Reads `pred.script` (a `Script`, a script draft, a dict or JSON) or, failing that, `pred.trajectory.script`,
    so it also scores the script stage of a full AgentRefine run.
    """
    script = _get(pred, "script")
    if script is None:
        traj = _get(pred, "trajectory")
        script = getattr(traj, "script", None) if traj is not None else None
    if script is None:
        return _failed_run(pred, "script")
    if isinstance(script, Script):
        from refine.verify import verify_script

        return _verdict_result(verify_script(script))
    if isinstance(script, str):
        try:
            script = _loads(script)
        except ValueError as exc:
            return _result(0.0, f"The script is not valid JSON: {exc}")
    return verifier_metric(gold, dspy.Prediction(script=script))


def _loads(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def trajectory_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """Trajectory acceptance: `refine.verify.verify_trajectory` on `pred.trajectory` (the example's
    `min_refinements`, default 2). Score 1.0 when accepted, else the fraction of checks passed; the feedback lists
    the verifier's reasons, which is what GEPA's reflection reads. A run without a trajectory scores 0."""
    if _get(pred, "trajectory") is None:
        return _failed_run(pred, "trajectory")
    return verifier_metric(gold, pred)


def verdict_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """A verdict the program attached itself (`pred.verdict`), else the verifier on its trajectory or script."""
    verdict = _get(pred, "verdict")
    if isinstance(verdict, Verdict):
        return _verdict_result(verdict)
    return verifier_metric(gold, pred)


def episode_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """Environment episodes (Reflexion, agents): 1.0 on success, else the progress rate, with the last feedback."""
    success = bool(_get(pred, "success"))
    progress = _get(pred, "progress")
    try:
        progress = float(progress) if progress is not None else 0.0
    except (TypeError, ValueError):
        progress = 0.0
    if success:
        return _result(1.0, "The task was completed.")
    lines = [f"The task was not completed (progress {progress:.0%})."]
    obs = _get(pred, "observation")
    if obs:
        lines.append(f"Last observation: {obs}")
    reflections = _get(pred, "reflections")
    if reflections:
        lines.append("Reflections so far: " + " | ".join(str(r) for r in reflections))
    return _result(progress, "\n".join(lines))


def _norm(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip().lower().rstrip(".")


def label_match_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    """Fraction of the example's labels (its non-input fields) that the prediction matches, ignoring case/space.

    For tasks with reference answers (e.g. a Self-Refine program over `{"task": ..., "output": ...}` rows).
    """
    labels = gold.labels() if hasattr(gold, "labels") else {}
    keys = [k for k in labels if not k.startswith("_")]
    if not keys:
        raise ConfigError(
            "label_match_metric needs examples with reference fields besides the inputs (e.g. an 'output' column); "
            "add them to the JSONL rows or pass another metric with --metric module:function."
        )
    wrong = []
    for k in keys:
        got = _get(pred, k)
        if got is None or _norm(got) != _norm(labels[k]):
            wrong.append(f"{k}: expected {labels[k]!r}, got {got!r}")
    score = 1.0 - len(wrong) / len(keys)
    return _result(score, "All fields match the reference." if not wrong else "Wrong fields:\n- " + "\n- ".join(wrong))


METRICS: dict[str, Metric] = {
    "verifier": verifier_metric,
    "verdict": verdict_metric,
    "script": script_metric,
    "trajectory": trajectory_metric,
    "episode": episode_metric,
    "label_match": label_match_metric,
}


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 5
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 5
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def as_feedback_metric(metric: Metric) -> Metric:
    """Wrap a user metric (2, 3 or 5 positional args; returning bool, number, dict or Prediction) into the
    five-argument form returning `dspy.Prediction(score, feedback)`.

    Raises:
        ConfigError: the metric takes fewer than two positional arguments.
    """
    n = _arity(metric)
    if n < 2:
        raise ConfigError(
            f"Metric {getattr(metric, '__name__', metric)!r} must accept (example, prediction[, trace]) "
            f"or GEPA's five arguments; it takes {n} positional argument(s)."
        )

    def feedback_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None):
        if n >= 5:
            out = metric(gold, pred, trace, pred_name, pred_trace)
        elif n >= 3:
            out = metric(gold, pred, trace)
        else:
            out = metric(gold, pred)
        if isinstance(out, dspy.Prediction) and "score" in out:
            return _result(float(out.score), str(out.get("feedback") or ""))
        if isinstance(out, Mapping) and "score" in out:
            return _result(float(out["score"]), str(out.get("feedback") or ""))
        if isinstance(out, bool | int | float):
            return _result(float(out), f"Score: {float(out):.3f}")
        raise ConfigError(
            f"Metric {getattr(metric, '__name__', metric)!r} returned {type(out).__name__}; "
            "return a bool, a number, {'score': x, 'feedback': ...} or dspy.Prediction(score=..., feedback=...)."
        )

    feedback_metric.__name__ = getattr(metric, "__name__", "metric")
    feedback_metric.__wrapped__ = metric  # type: ignore[attr-defined]
    return feedback_metric


def resolve_metric(spec: str | Metric) -> Metric:
    """A metric from a callable, a built-in name (see `METRICS`) or a `package.module:function` spec.

    The result always has the five-argument feedback form (see `as_feedback_metric`).

    Raises:
        ConfigError: the name is unknown or the spec cannot be imported.
    """
    if callable(spec):
        return spec if spec in METRICS.values() else as_feedback_metric(spec)
    if spec in METRICS:
        return METRICS[spec]
    if ":" not in spec:
        raise ConfigError(
            f"Unknown metric {spec!r}. Use a built-in name ({', '.join(sorted(METRICS))}) "
            "or 'package.module:function' (a function of (example, prediction[, trace]))."
        )
    fn = import_object(spec, "metric", form="package.module:function", hint="Check the module path and function name.")
    if not callable(fn):
        raise ConfigError(f"Metric {spec!r} is a {type(fn).__name__}, not a function.")
    return as_feedback_metric(fn)


def default_metric_for(outputs: list[str] | tuple[str, ...] | None) -> Metric:
    """The metric matching a program's outputs: verifier verdicts, environment episodes, or reference labels."""
    outs = set(outputs or ())
    if "verdict" in outs:
        return verdict_metric
    if "trajectory" in outs or "script" in outs:
        return verifier_metric
    if "success" in outs or "progress" in outs:
        return episode_metric
    return label_match_metric
