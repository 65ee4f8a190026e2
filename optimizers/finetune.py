"""RefinementFinetune: a DSPy optimizer that distills a teacher program's verified trajectories into a student LM.

Unlike `dspy.BootstrapFinetune`, which trains one example per predictor call, this trains on **whole multi-turn
trajectories**: the teacher program (e.g. the AgentRefine pipeline) returns a `Trajectory` per input, the
rule-based verifier keeps the accepted ones, every trajectory becomes one chat row whose erroneous assistant turns
stay in context with the loss masked, and TRL trains the student's base model on them. The student program is
returned bound to the new local LM.

Example:
    >>> from refine.optimizers.finetune import RefinementFinetune
    >>> from refine.distill import DistillConfig
    >>> opt = RefinementFinetune(DistillConfig(out="runs/student", max_steps=200))          # doctest: +SKIP
    >>> tuned = opt.compile(agent, trainset=[dspy.Example(persona=p).with_inputs("persona") for p in personas],
    ...                     teacher=AgentRefinePipeline())                                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from refine.errors import ConfigError, TrainingError

__all__ = ["RefinementFinetune"]

logger = logging.getLogger(__name__)


def _trajectory_of(pred: Any) -> Any:
    from refine.data import Trajectory

    value = getattr(pred, "trajectory", None) if pred is not None else None
    if value is None:
        return None
    if isinstance(value, Trajectory):
        return value
    try:
        return Trajectory.model_validate(value)
    except ValueError:
        return None


class _Safe(dspy.Module):
    """Runs the teacher and turns an exception into a recorded failure (one bad input never stops the run)."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.program = program

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        try:
            return dspy.Prediction(prediction=self.program(**kwargs), error=None)
        except Exception as exc:  # recorded with its reason, see RefinementFinetune.stats
            return dspy.Prediction(prediction=None, error=f"{type(exc).__name__}: {exc}")


class RefinementFinetune(dspy.teleprompt.Teleprompter):
    """Distill verified multi-turn trajectories from a teacher program into the student's LM.

    Args:
        config: Distillation settings (`refine.distill.DistillConfig`) or a dict of its fields; ``out`` is required.
        verify: ``verify(trajectory) -> Verdict``; defaults to `refine.verify.verify_trajectory`.
        min_trajectories: Fail (`TrainingError`) when fewer trajectories are accepted.
        num_threads: Teacher calls run in parallel with this many threads.
        lm_kwargs: Passed to `refine.lm.resolve_lm` for the student LM (e.g. ``max_tokens``).
    """

    def __init__(
        self,
        config: Any,
        *,
        verify: Callable[[Any], Any] | None = None,
        min_trajectories: int = 1,
        num_threads: int = 1,
        lm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from refine.distill.config import DistillConfig

        super().__init__()
        try:
            self.config = config if isinstance(config, DistillConfig) else DistillConfig(**dict(config))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"RefinementFinetune config: {exc}") from exc
        if self.config.lora:
            # The student must load back as a plain checkpoint.
            self.config = self.config.model_copy(update={"merge_lora": True})
        self.verify = verify
        self.min_trajectories = min_trajectories
        self.num_threads = num_threads
        self.lm_kwargs = dict(lm_kwargs or {})
        self.stats: dict[str, Any] = {}
        self.result: Any = None

    def collect(self, teacher: Any, trainset: Sequence[dspy.Example]) -> tuple[list[Any], list[dict[str, Any]]]:
        """Run the teacher on every example; return (accepted trajectories, rejections with their reasons)."""
        from refine.verify import verify_trajectory

        verify = self.verify or verify_trajectory
        if not trainset:
            raise ConfigError("RefinementFinetune.compile needs a non-empty trainset of dspy.Example inputs")
        examples = [ex if isinstance(ex, dspy.Example) else dspy.Example(**ex).with_inputs(*ex) for ex in trainset]
        runner = _Safe(teacher)
        outs = dspy.Parallel(num_threads=self.num_threads, disable_progress_bar=True)(
            [(runner, ex.inputs()) for ex in examples]
        )
        accepted, rejected = [], []
        for i, out in enumerate(outs):
            if out is None or out.error is not None:
                reason = out.error if out is not None else "no prediction"
                rejected.append({"index": i, "reason": f"teacher failed: {reason}"})
                continue
            traj = _trajectory_of(out.prediction)
            if traj is None:
                rejected.append({"index": i, "reason": "the teacher's prediction has no `trajectory`"})
                continue
            verdict = verify(traj)
            if not verdict.ok:
                rejected.append({"index": i, "reason": "; ".join(verdict.reasons) or "rejected"})
                continue
            accepted.append(traj.model_copy(update={"verdict": verdict}))
        return accepted, rejected

    def compile(
        self,
        student: Any,
        *,
        trainset: Sequence[dspy.Example],
        teacher: Any = None,
        valset: Sequence[dspy.Example] | None = None,
    ) -> Any:
        """Run the teacher, keep verified trajectories, distill them, and return the student on the new LM.

        Args:
            student: A DSPy module (every predictor gets the new LM) or an agent with an ``lm`` attribute.
            trainset: Inputs for the teacher (e.g. personas for the AgentRefine pipeline).
            teacher: The program producing ``Prediction(trajectory=...)``; defaults to the student.
            valset: Unused (kept for the optimizer protocol).

        Returns:
            A copy of the student bound to ``refine.lm.get_lm("local/<config.out>")``.
        """
        from refine.distill.trainer import distill
        from refine.distill.training_rows import trajectory_to_row
        from refine.lm import resolve_lm

        accepted, rejected = self.collect(teacher if teacher is not None else student, trainset)
        self.stats = {"examples": len(trainset), "accepted": len(accepted), "rejected": rejected}
        logger.info("RefinementFinetune: %d of %d trajectories accepted", len(accepted), len(trainset))
        if len(accepted) < self.min_trajectories:
            reasons = "; ".join(r["reason"] for r in rejected[:3])
            raise TrainingError(
                f"only {len(accepted)} of {len(trainset)} teacher trajectories passed verification "
                f"(need {self.min_trajectories}); first reasons: {reasons}"
            )
        rows = [trajectory_to_row(t) for t in accepted]
        self.result = distill(rows, self.config, source=f"RefinementFinetune teacher run ({len(rows)} trajectories)")
        lm = resolve_lm(self.result.model_string, **self.lm_kwargs)
        return _bind(student, lm)


def _bind(student: Any, lm: Any) -> Any:
    if isinstance(student, dspy.Module):
        tuned = student.deepcopy()
        tuned.set_lm(lm)
        return tuned
    if hasattr(student, "lm"):
        tuned = copy.copy(student)
        tuned.lm = lm
        return tuned
    raise ConfigError(
        f"cannot bind the distilled LM to a {type(student).__name__}: pass a dspy.Module or an agent with an `lm`"
    )
