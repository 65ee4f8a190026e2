"""What `refine eval` runs: `EvalConfig` (one object for the Python API and the CLI), its episodes, and the checks
and constructors of its environments. Re-exported by `refine.eval`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine.errors import ConfigError

__all__ = ["DEFAULT_ENVS", "SUITES", "EvalConfig", "EvalResult", "check_config", "episode_specs"]

DEFAULT_ENVS = ("babyai", "scienceworld", "pddl", "textworld")
#: Default per-episode deadline for remote LMs, per step of max_steps (a 30-step episode: 10 minutes); `refine eval`
#: and the quickstart's eval stage use it when no deadline is given.
EPISODE_S_PER_STEP = 20.0
SUITES = ("refine", "agentboard")


class EvalConfig(BaseModel):
    """What to evaluate; one object feeds both the Python API and `refine eval`."""

    model_config = ConfigDict(extra="forbid")
    #: Fields a resumed run may change: how hard to try, not what is measured (`RunStore(resume_ignores=...)`).
    RESUME_IGNORES: ClassVar[tuple[str, ...]] = ("workers",)

    envs: list[str] = Field(default_factory=lambda: list(DEFAULT_ENVS), description="Environments to evaluate on.")
    episodes: int = Field(default=5, ge=1, description="Episodes per environment (and per variant).")
    seed: int = Field(default=0, ge=0, description="Episode i of an environment uses seed `seed + i`.")
    max_steps: int = Field(default=30, ge=1, description="Step bound per episode (AgentBoard: 30).")
    workers: int = Field(default=8, ge=1, description="Episodes played at the same time (threads).")
    perturb: bool = Field(default=False, description="Also play every episode with reworded actions.")
    held_in: list[str] = Field(default_factory=list, description="Environments the agent was trained on.")
    env_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Constructor options per environment, e.g. {'pddl': {'tasks': ['blocks']}}."
    )
    agent: str = Field(default="", description="Agent spec (recorded in the manifest).")
    model: str = Field(default="", description="Model id of the agent (recorded in the manifest).")
    suite: str = Field(
        default="refine",
        description="'refine' (this project's environments) or 'agentboard' (AgentBoard's action spaces, subgoal "
        "progress and success rules where they can be reproduced offline).",
    )
    annotations: str | None = Field(
        default=None, description="With suite='agentboard': AgentBoard's data folder (DIR/<task>/test.jsonl subgoals)."
    )
    decoding: dict[str, Any] = Field(
        default_factory=dict, description="The agent's decoding settings (recorded in the summary), e.g. temperature."
    )
    episode_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one episode may take in all (a guard against servers that trickle bytes); an episode "
        "past it is abandoned and left pending for resume. None: no deadline.",
    )

    @field_validator("envs", "held_in")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        v = value.strip().lower()
        if v not in SUITES:
            raise ValueError(f"unknown suite {value!r}; use one of: {', '.join(SUITES)}")
        return v

    def settings(self) -> dict[str, Any]:
        """What produced the numbers: suite, step bound, episodes, seeds, decoding (the summary's `settings`)."""
        return {
            "suite": self.suite,
            "envs": list(self.envs),
            "max_steps": self.max_steps,
            "episodes": self.episodes,
            "seeds": [self.seed, self.seed + self.episodes - 1],
            "perturb": self.perturb,
            "decoding": dict(self.decoding),
            "agent": self.agent,
            "model": self.model,
            "annotations": self.annotations,
            "env_options": self.env_options,
        }


class EvalResult(BaseModel):
    """The outcome of `evaluate`: the summary, the episode records and the run directory (if any)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    out: str | None = None


def episode_specs(config: EvalConfig) -> list[dict[str, Any]]:
    """The episodes of a config, grouped by environment and variant.

    Grouping matters for speed: episodes that run at the same time then share one system prompt (instructions,
    environment, actions), and the embedded engine computes that prefix's KV cache once for the whole batch instead
    of once per row.
    """
    variants = ["base", "perturbed"] if config.perturb else ["base"]
    specs = []
    for env in config.envs:
        for variant in variants:
            for i in range(config.episodes):
                specs.append(
                    {"key": f"{env}:{variant}:{i}", "env": env, "variant": variant, "index": i, "seed": config.seed + i}
                )
    return specs


def _env_options(config: EvalConfig, name: str, agent: Any = None) -> dict[str, Any]:
    """Constructor options of env `name`: the step bound, the suite's annotations, the agent's needs, the user's."""
    opts: dict[str, Any] = {"max_steps": config.max_steps}
    if config.suite == "agentboard" and config.annotations and name != "toy":
        opts["annotations"] = config.annotations
    opts.update((getattr(agent, "env_options", None) or {}).get(name, {}))  # e.g. the expert needs gold paths
    opts.update(config.env_options.get(name, {}))
    return opts


def check_config(config: EvalConfig, agent: Any = None) -> None:
    """Validate every environment name and option of `config` before anything is played (ConfigError, one line)."""
    from refine.envs import check_env
    from refine.errors import EnvError
    from refine.preflight import check_env_names

    check_env_names(config.envs, config.suite)  # a near-miss name gets "did you mean"
    unknown = set(config.env_options) - set(config.envs)
    if unknown:
        raise ConfigError(f"Options given for environments that are not evaluated: {sorted(unknown)}; see --envs.")
    for name in config.envs:
        try:
            check_env(name, config.suite, _env_options(config, name, agent))
        except EnvError as exc:
            raise ConfigError(str(exc)) from exc


def default_factory(config: EvalConfig, agent: Any = None) -> Callable[[str, bool], Any]:
    from refine.envs import make_env

    def factory(name: str, perturbed: bool) -> Any:
        return make_env(name, perturb=perturbed, suite=config.suite, **_env_options(config, name, agent))

    return factory
