"""Rule-based verification of scripts and trajectories (no LM), also usable as a DSPy/GEPA metric.

The rules are AgentRefine's: a script is well formed (unique actions, compiling verification regexes whose named
groups all have allowed values); every player action matches an available action's pattern with allowed values;
the DM's `parameter_error` flag agrees with that check; the trajectory holds at least `min_refinements`
error -> fix episodes; and its last turn completes the task. Regexes are written by an LM, so every match runs
with a time bound (`regex` module `timeout=`): catastrophic backtracking becomes a reason, never a hang. The whole
verification of one trajectory is bounded too (`TRAJECTORY_TIME_CAP_S`): many slow patterns times many turns stop
at the cap, which is then a recorded reason.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import regex

from refine.data import ActionSpec, Script, Trajectory, Turn, Verdict

__all__ = [
    "REGEX_TIMEOUT_S",
    "TRAJECTORY_TIME_CAP_S",
    "match_action",
    "verifier_metric",
    "verify_script",
    "verify_trajectory",
]

logger = logging.getLogger(__name__)

REGEX_TIMEOUT_S = 0.05
"""Time bound of one LM-written regex match, in seconds."""

TRAJECTORY_TIME_CAP_S = 2.0
"""Time bound of all the pattern matching for one trajectory, in seconds (a legitimate one takes milliseconds)."""

_TIME_CAP = "verification time cap"

_MAX_PATTERN_LEN = 500
_MAX_ACTION_LEN = 500


def _norm(value: str) -> str:
    return " ".join(str(value).strip().lower().split())


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> Any:
    """Compile an LM-written pattern; raises `regex.error` (or ValueError for oversized patterns)."""
    if len(pattern) > _MAX_PATTERN_LEN:
        raise ValueError(f"pattern longer than {_MAX_PATTERN_LEN} characters")
    return regex.compile(pattern, regex.IGNORECASE)


def _group_names(pattern: str) -> list[str]:
    """Named groups of a pattern, from the compiled regex (falls back to a textual scan when it cannot compile)."""
    try:
        return sorted(_compile(pattern).groupindex, key=_compile(pattern).groupindex.get)
    except (regex.error, ValueError, TypeError):
        return ActionSpec(name="_", pattern=pattern).parameter_names()


def verify_script(script: Script) -> Verdict:
    """Check that a script is well formed. Every failed rule adds a reason naming the action or field.

    Example:
        >>> from refine.data import ActionSpec, Script
        >>> s = Script(environment="A kitchen.", tasks=["make tea"], actions=[
        ...     ActionSpec(name="take", pattern=r"^take (?P<obj>\\w+)$", parameters={"obj": ["kettle", "cup"]})])
        >>> verify_script(s).ok
        True
    """
    reasons: list[str] = []
    checks = 0

    def check(ok: bool, reason: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            reasons.append(reason)

    check(bool(script.environment.strip()), "script: the environment description is empty")
    check(any(t.strip() for t in script.tasks), "script: no task is given")
    check(bool(script.actions), "script: no available action is given")
    names = [_norm(a.name) for a in script.actions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    check(not dupes, f"script: action names are not unique: {dupes}")
    for a in script.actions:
        label = f"action {a.name!r}"
        check(bool(a.name.strip()), f"script: an action has an empty name (pattern {a.pattern!r})")
        err: Exception | None = None
        try:
            _compile(a.pattern)
        except (regex.error, ValueError, TypeError) as exc:
            err = exc
        check(err is None, f"script: {label}: pattern {a.pattern!r} does not compile: {err}")
        groups = _group_names(a.pattern)
        missing = [g for g in groups if g not in a.parameters]
        check(not missing, f"script: {label}: pattern groups {missing} have no allowed values")
        extra = [p for p in a.parameters if p not in groups]
        check(not extra, f"script: {label}: parameters {extra} are not named groups (?P<name>...) of the pattern")
        for p, values in a.parameters.items():
            check(
                any(str(v).strip() for v in values),
                f"script: {label}: parameter {p!r} has no allowed values",
            )
    return Verdict(ok=not reasons, reasons=reasons, stage="script", checks=max(checks, 1))


def match_action(
    script: Script, action: str, *, deadline: float | None = None
) -> tuple[ActionSpec | None, dict[str, str], list[str]]:
    """Find the available action that `action` instantiates.

    `deadline` (a `time.perf_counter()` value) stops the search once passed, with a time-cap problem.

    Returns:
        `(spec, params, problems)`: the matching spec (None when no pattern matches), the named-group values of the
        match, and the problems found (empty when the action is valid: it matches a pattern and every parameter
        value is allowed). A pattern that does not compile is skipped; one that times out is a problem.

    Example:
        >>> from refine.data import ActionSpec, Script
        >>> s = Script(environment="e", tasks=["t"], actions=[
        ...     ActionSpec(name="go", pattern=r"^go to (?P<place>\\w+)$", parameters={"place": ["kitchen"]})])
        >>> match_action(s, "go to kitchen")[1:]
        ({'place': 'kitchen'}, [])
        >>> match_action(s, "go to attic")[2]
        ["action 'go to attic': parameter 'place'='attic' is not an allowed value of 'go' (allowed: ['kitchen'])"]
    """
    text = " ".join(str(action or "").split())
    if not text:
        return None, {}, ["empty action"]
    if len(text) > _MAX_ACTION_LEN:
        return None, {}, [f"action longer than {_MAX_ACTION_LEN} characters"]
    timeouts: list[str] = []
    partial: tuple[ActionSpec, dict[str, str], list[str]] | None = None
    for spec in script.actions:
        if deadline is not None and time.perf_counter() > deadline:
            return None, {}, [*timeouts, f"action {text!r}: {_TIME_CAP} reached before every pattern was tried"]
        try:
            rx = _compile(spec.pattern)
        except (regex.error, ValueError, TypeError):
            continue
        try:
            m = rx.fullmatch(text, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:
            timeouts.append(
                f"pattern of action {spec.name!r} timed out after {REGEX_TIMEOUT_S}s on {text!r} "
                "(catastrophic backtracking)"
            )
            continue
        if m is None:
            continue
        params = {k: v for k, v in m.groupdict().items() if v is not None}
        problems = []
        for name, value in params.items():
            allowed = spec.parameters.get(name)
            if allowed is None:
                continue
            if _norm(value) not in {_norm(a) for a in allowed}:
                problems.append(
                    f"action {text!r}: parameter {name!r}={value!r} is not an allowed value of {spec.name!r} "
                    f"(allowed: {list(allowed)})"
                )
        if not problems:
            return spec, params, []
        if partial is None:
            partial = (spec, params, problems)
    if partial is not None:
        return partial[0], partial[1], partial[2] + timeouts
    return None, {}, [*timeouts, f"action {text!r} matches no available action's pattern"]


def _structure_reasons(turns: list[Turn]) -> list[str]:
    reasons = []
    for i, t in enumerate(turns):
        expected = "player" if i % 2 == 0 else "dm"
        if t.role != expected:
            reasons.append(f"turn {i}: expected a {expected} turn, got a {t.role} turn (turns must alternate)")
            break
    return reasons


def verify_trajectory(
    traj: Trajectory, *, min_refinements: int = 2, time_cap_s: float = TRAJECTORY_TIME_CAP_S
) -> Verdict:
    """Check a trajectory against its script with AgentRefine's rules; the verdict lists every violated rule.

    Rules: the script is well formed; turns alternate player/DM starting with the player; every player turn has an
    action and every DM turn an observation; the DM's `parameter_error` flag is set exactly on the player actions
    that match no pattern or use a value that is not allowed; at least `min_refinements` error -> fix episodes;
    the task is completed only on the last DM turn, without error flags. Pattern matching stops after `time_cap_s`
    seconds in all; the trajectory is then rejected with that cap as its reason.
    """
    deadline = time.perf_counter() + time_cap_s
    capped = False
    sv = verify_script(traj.script)
    reasons = list(sv.reasons)
    checks = sv.checks
    turns = traj.turns

    def check(ok: bool, reason: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            reasons.append(reason)

    check(bool(turns), "trajectory: no turns")
    structure = _structure_reasons(turns)
    check(not structure, "; ".join(structure))
    for i, t in enumerate(turns):
        if t.role == "player":
            check(bool((t.action or "").strip()), f"turn {i}: the player turn has no action")
            if not (t.action or "").strip():
                continue
            dm = turns[i + 1] if i + 1 < len(turns) and turns[i + 1].role == "dm" else None
            check(dm is not None, f"turn {i}: the player action {t.action!r} gets no DM answer")
            if dm is None or not sv.ok or capped:
                continue
            _, _, problems = match_action(traj.script, t.action or "", deadline=deadline)
            if any(_TIME_CAP in p for p in problems):
                capped = True
                check(
                    False,
                    f"trajectory: {_TIME_CAP} of {time_cap_s:g} s reached at turn {i} (LM-written patterns too slow "
                    "to match); the remaining actions were not checked",
                )
                continue
            if problems:
                reason = f"turn {i + 1}: the DM flagged no parameter_error, but {'; '.join(problems)}"
            else:
                reason = (
                    f"turn {i + 1}: the DM flagged parameter_error, but action {t.action!r} matches an available "
                    "action with allowed values"
                )
            check(bool(problems) == dm.parameter_error, reason)
        else:
            check(bool((t.observation or "").strip()), f"turn {i}: the DM turn has no observation")
    episodes = traj.refinement_episodes()
    check(
        episodes >= min_refinements,
        f"trajectory: {episodes} error -> fix episode(s), at least {min_refinements} required",
    )
    dm_turns = [i for i, t in enumerate(turns) if t.role == "dm"]
    last = turns[-1] if turns else None
    check(
        last is not None and last.role == "dm" and last.task_completed and not last.has_error,
        "trajectory: the last turn does not complete the task (a DM turn with task_completed and no error flag)",
    )
    early = [i for i in dm_turns[:-1] if turns[i].task_completed]
    check(not early, f"trajectory: task_completed is set before the last turn (turns {early})")
    return Verdict(ok=not reasons, reasons=reasons, stage="trajectory", checks=max(checks, 1))


def _as_trajectory(value: Any) -> Trajectory | None:
    if value is None or isinstance(value, Trajectory):
        return value
    if isinstance(value, dict):
        return Trajectory.model_validate(value)
    if isinstance(value, str):
        return Trajectory.model_validate_json(value)
    return None


def verifier_metric(
    example: Any,
    pred: Any,
    trace: Any = None,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> Any:
    """A DSPy metric (and GEPA's 5-argument feedback metric) from the verifier.

    Reads `pred.trajectory` (verified with `min_refinements` from the example, default 2) or, without one,
    `pred.script` (verified as a script; a prediction's own `verdict` is used when it holds a parse failure).

    Returns:
        `dspy.Prediction(score=float in [0, 1], feedback=str)`; `float(result)` works where a number is expected.
    """
    import dspy

    min_ref = 2
    if example is not None:
        try:
            min_ref = int(example.get("min_refinements", 2))
        except (AttributeError, TypeError, ValueError):
            min_ref = 2
    get = pred.get if hasattr(pred, "get") else (lambda k, d=None: getattr(pred, k, d))
    try:
        traj = _as_trajectory(get("trajectory", None))
    except ValueError as exc:
        return dspy.Prediction(score=0.0, feedback=f"The trajectory could not be read: {exc}")
    if traj is not None:
        if traj.verdict is not None and traj.verdict.stage in ("parse", "script") and not traj.turns:
            verdict = traj.verdict
        else:
            verdict = verify_trajectory(traj, min_refinements=min_ref)
        return dspy.Prediction(score=verdict.score, feedback=verdict.feedback())
    script = get("script", None)
    if script is not None:
        from refine.signatures.script import draft_to_script

        try:
            verdict = verify_script(draft_to_script(script))
        except Exception as exc:  # a malformed LM draft is a zero score with its reason, not a crash
            verdict = Verdict(ok=False, reasons=[f"script could not be read: {exc}"], stage="parse", checks=1)
        return dspy.Prediction(score=verdict.score, feedback=verdict.feedback())
    verdict = get("verdict", None)
    if isinstance(verdict, Verdict):
        return dspy.Prediction(score=verdict.score, feedback=verdict.feedback())
    return dspy.Prediction(score=0.0, feedback="The program produced neither a trajectory nor a script to verify.")
