"""`AgentRefinePipeline`: the paper-faithful one-shot synthesis program as a validated `ProgramGraph`.

persona -> GenerateScript -> verify_script -> PlayTrajectory -> verify_trajectory. A stage that fails verification
(or whose LM output cannot be parsed) is regenerated with the verifier's reasons as `feedback`, up to
`max_attempts` times, through bounded edges; every attempt is recorded in the prediction's `attempts`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dspy

from refine.data import Provenance, Script, Trajectory, Verdict
from refine.errors import ConfigError
from refine.graph import GraphModule, ProgramGraph
from refine.signatures.script import GenerateScript, draft_to_script, render_script
from refine.signatures.trajectory import PlayTrajectory, drafts_to_turns
from refine.verify import verify_script, verify_trajectory

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "AgentRefinePipeline",
    "build_graph",
    "check_script",
    "check_trajectory",
    "lm_name",
]

DEFAULT_MAX_ATTEMPTS = 4


def lm_name(module: Any = None) -> str:
    """The model id a predictor will call: its own LM if set, else the configured one ('' when none)."""
    lm = getattr(module, "lm", None) or dspy.settings.lm
    return str(getattr(lm, "model", "") or "")


def _feedback(stage: str, attempt: int, max_attempts: int, reasons: list[str]) -> str:
    # The attempt number keeps each retry's prompt distinct, so a cached answer is never replayed as the "retry".
    head = f"Attempt {attempt + 1} of {max_attempts}. The previous {stage} was rejected for these reasons:"
    return "\n".join([head, *(f"- {r}" for r in reasons)])


def _attempt_record(stage: str, index: int, verdict: Verdict, error: str | None) -> dict[str, Any]:
    return {"stage": stage, "attempt": index, "ok": verdict.ok, "reasons": list(verdict.reasons), "error": error}


SCRIPT_CHECK_OUTPUTS = ("verified_script", "script_text", "script_ok", "retry_script", "feedback", "attempts",
                        "verdict", "trajectory")  # fmt: skip
TRAJECTORY_CHECK_OUTPUTS = ("trajectory", "verdict", "retry_trajectory", "feedback", "attempts")
SCRIPT_CHECK = "verify_script; parse failures and rule violations become the next attempt's feedback"
TRAJECTORY_CHECK = "verify_trajectory with min_refinements"


def check_script(
    persona: str, script: Any, error: str | None, attempts: list[dict[str, Any]], *, max_attempts: int, teacher: Any
) -> dict[str, Any]:
    """Node: read and verify the drafted script; a failure becomes the next attempt's feedback, or, out of attempts,
    the run's rejected trajectory. `teacher` is the script module (its model goes into the provenance)."""
    index = sum(1 for a in attempts if a["stage"] == "script")
    verified: Script | None = None
    if error is None and script is None:
        error = "generate_script: the LM returned no script"
    if error is None:
        try:
            verified = draft_to_script(script, persona=persona)
        except Exception as exc:  # pydantic or shape errors of LM output: a recorded failure, not a crash
            error = f"generate_script: the script could not be read: {exc}"
    if verified is not None:
        verdict = verify_script(verified)
    else:
        verdict = Verdict(ok=False, reasons=[error or "no script"], stage="parse", checks=1)
    retry = not verdict.ok and index + 1 < max_attempts
    out: dict[str, Any] = {
        "verified_script": verified,
        "script_text": render_script(verified) if verified is not None else "",
        "script_ok": verdict.ok,
        "retry_script": retry,
        "feedback": _feedback("script", index + 1, max_attempts, verdict.reasons) if not verdict.ok else "",
        "attempts": [*attempts, _attempt_record("script", index, verdict, error)],
        "verdict": verdict,
        "trajectory": None,
    }
    if not verdict.ok and not retry:  # out of attempts: the run ends with the script's verdict
        out["trajectory"] = Trajectory(
            script=verified or Script(persona=persona, environment="", tasks=[], actions=[]),
            turns=[],
            verdict=verdict,
            provenance=Provenance(persona=persona, models={"teacher": lm_name(teacher)}),
        )
    return out


def check_trajectory(
    persona: str,
    seed: Any,
    verified_script: Script,
    turns: Any,
    error: str | None,
    attempts: list[dict[str, Any]],
    *,
    max_attempts: int,
    min_refinements: int,
    teacher: Any,
) -> dict[str, Any]:
    """Node: read the played turns and verify the trajectory (`min_refinements` error -> fix episodes); a failure
    becomes the next attempt's feedback. `teacher` is the trajectory module (its model goes into the provenance)."""
    index = sum(1 for a in attempts if a["stage"] == "trajectory")
    parsed = []
    if error is None and turns is None:
        error = "generate_trajectory: the LM returned no turns"
    if error is None:
        try:
            parsed = drafts_to_turns(turns)
        except Exception as exc:  # malformed LM output becomes a recorded failure with its reason
            error = f"generate_trajectory: the turns could not be read: {exc}"
    traj = Trajectory(
        script=verified_script,
        turns=parsed,
        provenance=Provenance(
            persona=persona, seed=seed if isinstance(seed, int) else None, models={"teacher": lm_name(teacher)}
        ),
    ).mark_losses()
    if error is None:
        verdict = verify_trajectory(traj, min_refinements=min_refinements)
    else:
        verdict = Verdict(ok=False, reasons=[error], stage="parse", checks=1)
    retry = not verdict.ok and index + 1 < max_attempts
    return {
        "trajectory": traj.model_copy(update={"verdict": verdict}),
        "verdict": verdict,
        "retry_trajectory": retry,
        "feedback": _feedback("trajectory", index + 1, max_attempts, verdict.reasons) if not verdict.ok else "",
        "attempts": [*attempts, _attempt_record("trajectory", index, verdict, error)],
    }


def build_graph(
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    min_refinements: int = 2,
    script_module: dspy.Module | None = None,
    trajectory_module: dspy.Module | None = None,
) -> ProgramGraph:
    """The one-shot AgentRefine graph (the paper's figure): script -> check, then trajectory -> check, each stage
    retried with the verifier's reasons up to `max_attempts` times (the paper uses 4); `min_refinements` error -> fix
    episodes make a trajectory acceptable. `script_module`/`trajectory_module` replace the two `dspy.Predict`s.

    Example:
        >>> build_graph().node_names
        ['generate_script', 'check_script', 'generate_trajectory', 'check_trajectory']
    """
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}; the paper uses 4.")
    gen_script = script_module or dspy.Predict(GenerateScript)
    gen_traj = trajectory_module or dspy.Predict(PlayTrajectory)
    retries = max(max_attempts - 1, 1)
    check_s = partial(check_script, max_attempts=max_attempts, teacher=gen_script)
    check_t = partial(check_trajectory, max_attempts=max_attempts, min_refinements=min_refinements, teacher=gen_traj)
    g = ProgramGraph(
        "agentrefine",
        inputs=["persona"],
        outputs=["trajectory", "verdict", "attempts"],
        defaults={"seed": 0, "feedback": "", "attempts": []},
    )
    g.add_node("generate_script", gen_script, inputs=["persona", "feedback"], outputs=["script"], catch_errors=True)
    g.add_node("check_script", check_s, outputs=SCRIPT_CHECK_OUTPUTS, description=SCRIPT_CHECK)
    g.add_node(
        "generate_trajectory", gen_traj, inputs=["script_text", "feedback"], outputs=["turns"], catch_errors=True
    )
    g.add_node("check_trajectory", check_t, outputs=TRAJECTORY_CHECK_OUTPUTS, description=TRAJECTORY_CHECK)
    g.add_edge("generate_script", "check_script")
    g.add_edge("check_script", "generate_script", condition="retry_script", max_iters=retries)
    g.add_edge("check_script", "generate_trajectory", condition="script_ok")
    g.add_edge("generate_trajectory", "check_trajectory")
    g.add_edge("check_trajectory", "generate_trajectory", condition="retry_trajectory", max_iters=retries)
    return g


class AgentRefinePipeline(GraphModule):
    """The one-shot AgentRefine program, compiled: `pipeline(persona=...)` -> `Prediction(trajectory, verdict, ...)`.

    Example:
        >>> pipe = AgentRefinePipeline(max_attempts=2)
        >>> sorted(name for name, _ in pipe.named_predictors())
        ["nodes['generate_script']", "nodes['generate_trajectory']"]
    """

    def __init__(self, max_attempts: int = DEFAULT_MAX_ATTEMPTS, min_refinements: int = 2, **options: Any) -> None:
        graph = build_graph(max_attempts=max_attempts, min_refinements=min_refinements, **options)
        graph.validate()
        super().__init__(graph)
