"""`InteractiveRefine`: agent -> environment -> feedback -> refine, as a bounded-loop `ProgramGraph`.

The environment is either the LLM Dungeon Master judging actions against a script (`EnvironmentStep`) or any
object implementing the `refine.envs.base.TextEnv` protocol. The agent (`PlayerAct`) may run on a different LM from
the teacher that interprets feedback and refines actions (`agent_lm=`): the student acts, the teacher fixes its
mistakes, which yields on-policy refinement data. Each run returns a verified `Trajectory`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import dspy

from refine.data import ActionSpec, Provenance, Script, Trajectory, Turn, Verdict
from refine.envs.base import DEFAULT_MAX_STEPS, TextEnv, expert_action
from refine.errors import ConfigError
from refine.graph import GraphModule, ProgramGraph
from refine.signatures.environment import EnvironmentStep
from refine.signatures.feedback import InterpretFeedback
from refine.signatures.player import PlayerAct
from refine.signatures.refine_action import RefineAction
from refine.signatures.script import draft_to_script, render_script
from refine.verify import match_action, verify_trajectory

__all__ = ["InteractiveRefine", "action_pattern", "build_graph", "diagnose", "fix_sentence", "script_from_env"]

_FLAGS = ("parameter_error", "place_error", "logic_error")


def script_from_env(env: TextEnv, seed: int | None = None, task: str | None = None) -> tuple[Script, str]:
    """Reset `env` and describe it as a `Script`; returns (script, first observation).

    Each available action becomes a verification pattern (`action_pattern`): a literal one ("turn left"), or, for a
    template with `<slot>` placeholders as PDDL, ScienceWorld and TextWorld list them ("stack <block> <other
    block>"), one group per slot. When the environment names its objects (`info["objects"]`, e.g. PDDL), each slot
    is a named group whose allowed values are those objects, so the verifier checks parameters; otherwise a slot
    matches any text and the environment's own feedback is the judge.
    """
    first = env.reset(task=task, seed=seed)
    info = first.info or {}
    descriptions = info.get("action_descriptions") or {}
    objects = [str(o) for o in info.get("objects") or []]
    actions = []
    for a in dict.fromkeys(first.available_actions or []):
        pattern = action_pattern(a, named=bool(objects))
        spec = ActionSpec(name=a, description=descriptions.get(a, a), pattern=pattern)
        actions.append(spec.model_copy(update={"parameters": {name: list(objects) for name in spec.parameter_names()}}))
    script = Script(
        persona="",
        environment=f"{getattr(env, 'name', 'environment')}: {first.observation}",
        tasks=[first.instruction],
        completion_conditions=["the environment reports success"],
        actions=actions,
    )
    return script, first.observation


_SLOT = re.compile(r"<[^<>]+>")


def action_pattern(action: str, *, named: bool = True) -> str:
    """The verification regex of one available action: its literal text, each `<slot>` a group.

    Args:
        action: an available action, literal ("turn left") or a template ("pickup <block>").
        named: slots become named groups `arg1`, `arg2`, ... (whose allowed values a `Script` lists); False makes them
            non-capturing, for environments that do not name their objects.

    Example:
        >>> action_pattern("pickup <block>")
        '^pickup\\\\ (?P<arg1>.+?)$'
        >>> action_pattern("go <direction>", named=False)
        '^go\\\\ (?:.+?)$'
        >>> import regex; regex.fullmatch(action_pattern("connect <obj> to <obj>"), "connect red wire to battery")[2]
        'battery'
    """
    import regex

    parts = _SLOT.split(action)
    out = regex.escape(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        out += (f"(?P<arg{i}>.+?)" if named else "(?:.+?)") + regex.escape(part)
    return "^" + out + "$"


_REASON_WORDS = 12


def _reason(observation: str) -> str:
    """The cause an environment gives for refusing an action, cut to a short clause ('' when it gives none).

    Environments phrase refusals as 'You cannot move forward: a grey wall blocks the way.' or 'The door is locked.':
    the clause after the colon (else the first sentence) names the cause. Long text (a listing, a description of the
    room) is not a cause and is dropped rather than copied.
    """
    first = re.split(r"(?<=[.!?])\s", " ".join(str(observation or "").split()), maxsplit=1)[0]
    clause = first.split(":", 1)[1] if ":" in first else first
    clause = clause.strip().rstrip(".!?").strip()
    words = clause.split()
    if not words or len(words) > _REASON_WORDS or "'" in clause or '"' in clause:
        return ""
    return clause[0].lower() + clause[1:]


def diagnose(script: Script, action: str, observation: str = "") -> str:
    """One short sentence saying what was wrong with `action`: an unknown action, extra words after a valid one, an
    object that is not in the environment, or a well-formed action the current state does not allow (with the
    environment's cause, cut to a clause).

    Example:
        >>> from refine.data import ActionSpec, Script
        >>> pick = ActionSpec(name="pick up", pattern=action_pattern("pick up"))
        >>> stack = ActionSpec(name="stack", pattern=action_pattern("stack <x>"), parameters={"arg1": ["a", "b"]})
        >>> s = Script(environment="e", tasks=["t"], actions=[pick, stack])
        >>> diagnose(s, "pick up the grey box")
        "'pick up' takes no object here; the extra words 'the grey box' make it invalid."
        >>> diagnose(s, "stack zz")
        "'stack zz' names zz, which is not an object here (objects: a, b)."
        >>> diagnose(s, "fly away")
        "'fly away' is not one of the available actions."
        >>> diagnose(s, "pick up", "You cannot pick up anything: you already carry a red key.")
        "'pick up' is a valid action, but not now: you already carry a red key."
    """
    text = " ".join(str(action or "").split())
    spec, params, problems = match_action(script, text)
    if spec is None:
        lowered = text.lower()
        stem = max(
            (a.name for a in script.actions if "<" not in a.name and lowered.startswith(a.name.lower() + " ")),
            key=len,
            default=None,
        )
        if stem is not None:
            return f"'{stem}' takes no object here; the extra words '{text[len(stem) + 1 :]}' make it invalid."
        return f"'{text}' is not one of the available actions."
    bad = [v for k, v in params.items() if spec.parameters.get(k) and v not in spec.parameters[k]]
    if bad:
        allowed = list(dict.fromkeys(x for k in spec.parameters for x in spec.parameters[k]))
        listing = f" (objects: {', '.join(allowed)})" if len(allowed) <= 8 else ""
        names = " and ".join(dict.fromkeys(bad))
        return f"'{text}' names {names}, which {'is' if len(set(bad)) == 1 else 'are'} not an object here{listing}."
    if problems:
        return f"'{text}' does not fit the form of '{spec.name}'."
    cause = _reason(observation)
    return f"'{text}' is a valid action, but not now" + (f": {cause}." if cause else " in this state.")


def fix_sentence(failed: str, fix: str) -> str:
    """What the correction is, in a few words: the right form of the same verb, or the step taken instead.

    Example:
        >>> fix_sentence("pickup zz", "pickup b")
        "The fix is 'pickup b'."
        >>> fix_sentence("move forward", "turn left")
        'Instead I turn left.'
    """
    same_verb = failed.split()[:1] == fix.split()[:1] and failed.strip() != fix.strip()
    if same_verb:
        return f"The fix is '{fix}'."
    return f"Instead I {fix}."


def _history(turns: list[Turn]) -> str:
    lines = []
    for t in turns:
        if t.role == "player":
            lines.append(f"Action: {t.action}")
        else:
            lines.append(f"Observation: {t.observation}")
    return "\n".join(lines)


def _model(module: Any) -> str:
    lm = getattr(module, "lm", None) or dspy.settings.lm
    return str(getattr(lm, "model", "") or "")


def _check_options(env: Any, max_steps: int, refiner: str) -> None:
    if max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}.")
    if env is not None and not (isinstance(env, TextEnv) or callable(env)):
        raise ConfigError(
            f"env must implement refine.envs.base.TextEnv (reset/step) or be a factory returning one; "
            f"got {type(env).__name__}."
        )
    if refiner not in ("lm", "env"):
        raise ConfigError(f"refiner must be 'lm' or 'env', got {refiner!r}.")
    if refiner == "env" and env is None:
        raise ConfigError(
            "refiner='env' needs a real environment whose expert corrects the agent: pass env=<TextEnv factory> "
            "(e.g. lambda: make_env('babyai')), or use refiner='lm' with the LLM Dungeon Master."
        )


START_OUTPUTS = (
    *("env_handle", "verified_script", "script_text", "environment", "goal", "actions", "history", "turns"),
    "steps",
)
ENV_OUTPUTS = ("analysis", "observation", *_FLAGS, "task_completed")
RECORD_OUTPUTS = ("turns", "steps", "history", "failure", "continue_acting", "needs_refinement", "finished")
FINISH_OUTPUTS = ("trajectory", "verdict", "success", "attempts")


def start(script: Any, seed: Any, *, env: TextEnv | Callable[[], TextEnv] | None) -> dict[str, Any]:
    """Node: the run's script (given, for the LLM Dungeon Master; else described from a fresh `env`) and state."""
    handle = None
    if env is None:
        if script is None:
            raise ConfigError("InteractiveRefine with the LLM Dungeon Master needs a `script` input.")
        verified = draft_to_script(script) if not isinstance(script, Script) else script
        observation = verified.environment
    else:
        handle = env if isinstance(env, TextEnv) else env()
        verified, observation = script_from_env(handle, seed=seed if isinstance(seed, int) else None)
    return {
        "env_handle": handle,
        "verified_script": verified,
        "script_text": render_script(verified),
        "environment": verified.environment,
        "goal": verified.goal,
        "actions": verified.describe_actions(),
        "history": f"Observation: {observation}",
        "turns": [],
        "steps": 0,
    }


def env_step(env_handle: Any, verified_script: Script, action: str) -> dict[str, Any]:
    """Node: one step of the real environment; an invalid action is a parameter error when it does not fit the
    script's action forms, else a logic error (well-formed, but not allowed now)."""
    res = env_handle.step(action)
    _, _, problems = match_action(verified_script, action)
    return {
        "analysis": "",
        "observation": res.observation,
        "parameter_error": bool(res.invalid and problems),
        "place_error": False,
        "logic_error": bool(res.invalid and not problems),
        "task_completed": bool(res.success),
        "env_done": bool(res.done),
    }


def env_interpret(action: str, observation: str, verified_script: Script) -> dict[str, Any]:
    """Node (refiner="env"): what was wrong with the action, from the script and the environment's answer.

    Function nodes name their outputs in `build_graph`; the LM modules' come from their signatures."""
    return {"diagnosis": diagnose(verified_script, action, observation)}


def env_refine(env_handle: Any, diagnosis: str, action: str) -> dict[str, Any]:
    """Node (refiner="env"): the environment's expert supplies the corrected action."""
    fix = expert_action(env_handle)
    if fix is None:
        raise ConfigError("the environment's expert has no next action to correct the agent with")
    return {"thought": f"{diagnosis} {fix_sentence(action, fix)}", "action": fix}


def record(
    turns: list[Turn],
    steps: int,
    history: str,
    thought: Any,
    action: Any,
    analysis: Any,
    observation: Any,
    parameter_error: Any,
    place_error: Any,
    logic_error: Any,
    task_completed: Any,
    env_done: Any,
    error: str | None,
    *,
    max_steps: int,
) -> dict[str, Any]:
    """Node: add the step's player and environment turns, and decide: act again, refine a flagged step, or finish."""
    failure = None
    if not action:
        failure = error or "the agent produced no action"
    elif observation is None:
        failure = error or "the environment produced no observation"
    if failure is None:
        player = Turn(role="player", thought=str(thought or ""), action=str(action))
        dm = Turn(
            role="dm",
            thought=str(analysis or ""),
            observation=str(observation),
            parameter_error=bool(parameter_error),
            place_error=bool(place_error),
            logic_error=bool(logic_error),
            task_completed=bool(task_completed),
        )
        turns = [*turns, player, dm]
        steps += 1
    flagged = failure is None and any(bool(v) for v in (parameter_error, place_error, logic_error))
    done = failure is not None or bool(task_completed) or bool(env_done) or steps >= max_steps
    return {
        "turns": turns,
        "steps": steps,
        "history": f"{history}\nAction: {action}\nObservation: {observation}" if failure is None else history,
        "failure": failure,
        "continue_acting": not done and not flagged,
        "needs_refinement": not done and flagged,
        "finished": done,
    }


def finish(
    verified_script: Script,
    turns: list[Turn],
    failure: Any,
    seed: Any,
    steps: int,
    *,
    min_refinements: int,
    agent: Any,
    teacher: Any,
    dm: Any,
) -> dict[str, Any]:
    """Node: the verified trajectory (`min_refinements` error -> fix episodes), with the models that made it."""
    models = {"agent": _model(agent), "teacher": _model(teacher) if isinstance(teacher, dspy.Module) else "env-expert"}
    if dm is not None:
        models["dm"] = _model(dm)
    traj = Trajectory(
        script=verified_script,
        turns=list(turns),
        provenance=Provenance(
            persona=verified_script.persona, seed=seed if isinstance(seed, int) else None, models=models
        ),
    ).mark_losses()
    verdict = verify_trajectory(traj, min_refinements=min_refinements)
    if failure:
        verdict = Verdict(
            ok=False, reasons=[f"parse: {failure}", *verdict.reasons], stage="parse", checks=verdict.checks + 1
        )
    attempt = {"stage": "interactive", "attempt": 0, "ok": verdict.ok, "reasons": verdict.reasons}
    attempt.update(error=failure, steps=steps)
    return {
        "trajectory": traj.model_copy(update={"verdict": verdict}),
        "verdict": verdict,
        "success": bool(turns) and turns[-1].task_completed,
        "attempts": [attempt],
    }


def _nodes(env: Any, refiner: str, agent_lm: Any, teacher_lm: Any) -> tuple[dspy.Module, Any, Any, Any]:
    """(act, the LLM Dungeon Master or None, interpret, refine), each module on its LM."""
    act = dspy.Predict(PlayerAct)
    if agent_lm is not None:
        act.set_lm(agent_lm)
    dm = dspy.Predict(EnvironmentStep) if env is None else None
    interpret: Any = dspy.Predict(InterpretFeedback) if refiner == "lm" else env_interpret
    refine: Any = dspy.Predict(RefineAction) if refiner == "lm" else env_refine
    for m in (interpret, refine, dm):
        if isinstance(m, dspy.Module) and teacher_lm is not None:
            m.set_lm(teacher_lm)
    return act, dm, interpret, refine


def _defaults() -> dict[str, Any]:
    values = {"seed": 0, "script": None, "thought": "", "action": "", "analysis": "", "observation": None}
    values.update(env_done=False, diagnosis="", error=None, task_completed=False)
    return {**values, **dict.fromkeys(_FLAGS, False)}


def build_graph(
    env: TextEnv | Callable[[], TextEnv] | None = None,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    min_refinements: int = 2,
    agent_lm: dspy.LM | None = None,
    teacher_lm: dspy.LM | None = None,
    refiner: str = "lm",
) -> ProgramGraph:
    """The interactive refinement graph: start -> act -> environment -> record, looping back to act, or through
    interpret -> refine when a step is flagged, until finish.

    `env`: None for the LLM Dungeon Master over the `script` input, a `TextEnv` (runs must then not be concurrent)
    or a factory of fresh ones (safe with threads). `max_steps` bounds player actions (AgentBoard uses 30).
    `agent_lm` runs the acting node (e.g. the student), `teacher_lm` the others. `refiner`: "lm" (the teacher LM
    interprets feedback and refines the action) or "env" (the environment's expert supplies the fix: verified
    on-policy data without an LLM teacher; needs a real environment with an expert).

    Example:
        >>> build_graph().node_names
        ['start', 'act', 'environment', 'record', 'interpret', 'refine', 'finish']
    """
    _check_options(env, max_steps, refiner)
    act, dm, interpret, refine = _nodes(env, refiner, agent_lm, teacher_lm)
    done = partial(finish, min_refinements=min_refinements, agent=act, teacher=refine, dm=dm)
    g = ProgramGraph("interactive", inputs=[], outputs=FINISH_OUTPUTS, defaults=_defaults(), entry="start")
    g.add_node("start", partial(start, env=env), outputs=START_OUTPUTS)
    g.add_node("act", act, catch_errors=True)
    if dm is not None:
        g.add_node(
            "environment", dm, inputs=["script_text", "history", "action"], outputs=ENV_OUTPUTS, catch_errors=True
        )
    else:
        g.add_node("environment", env_step, outputs=[*ENV_OUTPUTS, "env_done"], catch_errors=True)
    g.add_node("record", partial(record, max_steps=max_steps), outputs=RECORD_OUTPUTS)
    g.add_node("interpret", interpret, outputs=["diagnosis"] if refiner == "env" else None, catch_errors=True)
    g.add_node("refine", refine, outputs=["thought", "action"] if refiner == "env" else None, catch_errors=True)
    g.add_node("finish", done, outputs=FINISH_OUTPUTS)
    g.add_edge("start", "act")
    g.add_edge("act", "environment", condition="action")
    g.add_edge("act", "record", condition="not action")
    g.add_edge("environment", "record")
    g.add_edge("record", "act", condition="continue_acting", max_iters=max_steps)
    g.add_edge("record", "interpret", condition="needs_refinement", max_iters=max_steps)
    g.add_edge("record", "finish", condition="finished")
    g.add_edge("interpret", "refine")
    g.add_edge("refine", "environment", condition="action")
    g.add_edge("refine", "record", condition="not action")
    return g


class InteractiveRefine(GraphModule):
    """The interactive refinement program, compiled: `program(script=...)` (LLM DM) or `program(seed=...)` (env).

    Example:
        >>> from refine.envs.base import ToyEnv
        >>> prog = InteractiveRefine(env=ToyEnv, max_steps=6)
        >>> sorted(name for name, _ in prog.named_predictors())
        ["nodes['act']", "nodes['interpret']", "nodes['refine']"]
    """

    def __init__(self, env: TextEnv | Callable[[], TextEnv] | None = None, **options: Any) -> None:
        graph = build_graph(env, **options)
        graph.validate()
        super().__init__(graph)
