"""Robustness perturbation (AgentRefine, section "robustness"): the same tasks with reworded action formats.

`PerturbedEnv(env)` shows the agent reworded action templates (synonyms such as "grab <thing>" for "take <thing>",
and reordered argument phrasing such as "from <container> get <thing>" for "take <thing> from <container>"),
rewrites the lists of valid actions the same way, and maps the agent's reworded actions back to the wrapped
environment's syntax. An action written in the *original* syntax of a reworded template is refused as invalid: an
agent that memorised one environment's action format instead of reading the instructions loses score, and the
drop from the unperturbed score is what the robustness table reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from refine.envs._common import normalize_action
from refine.envs.base import EnvObservation, EnvStep

__all__ = ["PERTURBATIONS", "PerturbedEnv", "Rewording", "rewordings_for"]

_SLOT = re.compile(r"\{(\w+)\}")


def _compile(template: str) -> re.Pattern[str]:
    parts, last = [], 0
    for m in _SLOT.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>.+?)")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + "$", re.I)


@dataclass(frozen=True)
class Rewording:
    """One action template in its original and its perturbed wording; slots are `{name}`.

    Example:
        >>> r = Rewording("take {a} from {b}", "from {b} get {a}")
        >>> r.to_perturbed("take apple from fridge"), r.to_canonical("from fridge get apple")
        ('from fridge get apple', 'take apple from fridge')
    """

    canonical: str
    perturbed: str
    _canon_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _pert_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_canon_re", _compile(self.canonical))
        object.__setattr__(self, "_pert_re", _compile(self.perturbed))

    @staticmethod
    def _fill(template: str, m: re.Match[str]) -> str:
        return _SLOT.sub(lambda s: m.group(s.group(1)).strip(), template)

    def to_perturbed(self, action: str) -> str | None:
        m = self._canon_re.match(action.strip())
        return self._fill(self.perturbed, m) if m else None

    def to_canonical(self, action: str) -> str | None:
        m = self._pert_re.match(action.strip())
        return self._fill(self.canonical, m) if m else None

    def matches_canonical(self, action: str) -> bool:
        return self._canon_re.match(action.strip()) is not None


def _rw(*pairs: tuple[str, str]) -> tuple[Rewording, ...]:
    # Longest canonical templates first, so "take {a} from {b}" wins over "take {a}".
    return tuple(sorted((Rewording(c, p) for c, p in pairs), key=lambda r: -len(_SLOT.sub("", r.canonical))))


PERTURBATIONS: dict[str, tuple[Rewording, ...]] = {
    "toy": _rw(
        ("take {a}", "grab {a}"), ("open {a}", "unlatch {a}"), ("go {a}", "walk through {a}"), ("look", "look around")
    ),
    "babyai": _rw(
        ("turn left", "rotate left"),
        ("turn right", "rotate right"),
        ("move forward", "walk ahead"),
        ("pick up", "grab"),
        ("drop", "release"),
        ("toggle", "interact"),
    ),
    "pddl:blocks": _rw(
        ("pickup {a}", "lift {a} from the table"),
        ("putdown {a}", "lower {a} onto the table"),
        ("stack {a} {b}", "place {a} on top of {b}"),
        ("unstack {a}", "take {a} off its block"),
    ),
    "pddl:gripper": _rw(
        ("move {a} {b}", "travel from {a} to {b}"),
        ("pick {a} {b} {c}", "grab {a} in {b} with {c}"),
        ("drop {a} {b} {c}", "release {a} in {b} from {c}"),
    ),
    "scienceworld": _rw(
        ("pick up {a}", "grab {a}"),
        ("put down {a}", "set down {a}"),
        ("move {a} to {b}", "relocate {a} into {b}"),
        ("pour {a} into {b}", "empty {a} into {b}"),
        ("pour {a} in {b}", "empty {a} into {b}"),
        ("look at {a}", "inspect {a}"),
        ("look in {a}", "peek into {a}"),
        ("look around", "survey the room"),
        ("go to {a}", "walk to {a}"),
        ("teleport to {a}", "warp to {a}"),
        ("focus on {a}", "concentrate on {a}"),
        ("activate {a}", "switch on {a}"),
        ("deactivate {a}", "switch off {a}"),
        ("connect {a} to {b}", "wire {a} with {b}"),
        ("use {a} on {b}", "apply {a} to {b}"),
        ("dunk {a} in {b}", "dip {a} into {b}"),
        ("mix {a}", "stir {a}"),
        ("eat {a}", "consume {a}"),
        ("inventory", "check inventory"),
    ),
    "textworld": _rw(
        ("go {a}", "head {a}"),
        ("take {a} from {b}", "from {b} get {a}"),
        ("take {a}", "get {a}"),
        ("put {a} on {b}", "place {a} onto {b}"),
        ("insert {a} into {b}", "place {a} inside {b}"),
        ("unlock {a} with {b}", "with {b} unlock {a}"),
        ("lock {a} with {b}", "with {b} lock {a}"),
        ("examine {a}", "inspect {a}"),
        ("drop {a}", "discard {a}"),
        ("eat {a}", "consume {a}"),
        ("inventory", "check inventory"),
        ("look", "look around"),
    ),
}


def rewordings_for(env_name: str, task: str = "") -> tuple[Rewording, ...]:
    """The rewordings of an environment family (PDDL: of its domain); empty when none are defined."""
    return PERTURBATIONS.get(f"{env_name}:{task}".lower()) or PERTURBATIONS.get(env_name.lower(), ())


def _reword_form(rules: tuple[Rewording, ...], text: str) -> str:
    for r in rules:
        out = r.to_perturbed(text)
        if out is not None:
            return out
    return text


class PerturbedEnv:
    """Wrap a `TextEnv` so the agent sees and must use reworded action formats.

    Example:
        >>> from refine.envs.base import ToyEnv
        >>> env = PerturbedEnv(ToyEnv())
        >>> env.reset().available_actions[:2]
        ['grab key', 'grab lamp']
        >>> env.step("take key").invalid, env.step("grab key").progress
        (True, 0.3333333333333333)
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.name = env.name
        self.max_steps = env.max_steps
        self.description = getattr(env, "description", "")
        self.rules: tuple[Rewording, ...] = ()
        self._steps = 0
        self._progress = 0.0

    def __getattr__(self, item: str) -> Any:
        return getattr(self.env, item)

    def perturb_action(self, action: str) -> str:
        """The reworded form of an action (or of an action template such as 'take <thing>')."""
        return _reword_form(self.rules, action)

    def _to_canonical(self, action: str) -> tuple[str | None, bool]:
        """(action in the wrapped env's syntax, refused) for an agent action."""
        a = normalize_action(action)
        for r in self.rules:
            canon = r.to_canonical(a)
            if canon is not None:
                return canon, False
        # The original wording of a reworded template is not part of the perturbed action set.
        refused = any(r.matches_canonical(a) and r.canonical != r.perturbed for r in self.rules)
        return (None, True) if refused else (action, False)

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        obs = self.env.reset(task, seed)
        self.rules = rewordings_for(self.name, getattr(self.env, "task", "") or "")
        self._steps, self._progress = 0, 0.0
        info = dict(obs.info, perturbed=True)
        if isinstance(info.get("action_descriptions"), dict):
            info["action_descriptions"] = {self.perturb_action(k): v for k, v in info["action_descriptions"].items()}
        if isinstance(info.get("valid_actions"), list):
            info["valid_actions"] = [self.perturb_action(a) for a in info["valid_actions"]]
        return EnvObservation(
            observation=obs.observation,
            instruction=obs.instruction,
            available_actions=[self.perturb_action(a) for a in obs.available_actions],
            info=info,
        )

    def step(self, action: str) -> EnvStep:
        self._steps += 1
        canon, refused = self._to_canonical(action)
        if refused or canon is None:
            return EnvStep(
                f"Unknown action: '{action.strip()}'. Use the actions exactly as they are described.",
                done=self._steps >= self.max_steps,
                success=False,
                progress=self._progress,
                invalid=True,
                info={"perturbed": True, "steps": self._steps},
            )
        st = self.env.step(canon)
        self._progress = st.progress
        acts = [self.perturb_action(a) for a in st.available_actions] if st.available_actions else st.available_actions
        return EnvStep(
            st.observation,
            done=st.done or self._steps >= self.max_steps,
            success=st.success,
            progress=st.progress,
            invalid=st.invalid,
            available_actions=acts,
            info=dict(st.info, perturbed=True, action_sent=canon),
        )

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()
