"""`refine quickstart`: the whole loop offline on the embedded model, resumable stage by stage.

1. **synthesize** paper-style (one-shot) trajectories from built-in personas with the teacher LM, verified by rules;
2. **synthesize on-policy refinement data** on the held-in real environments (`refine synth --program interactive
   --env ... --refiner env`): the student acts, the environment's own expert (BabyAI bot, PDDL planner, TextWorld
   walkthrough) refines its mistakes, every trajectory verified;
3. **distill** the accepted trajectories into the student (erroneous turns masked from the loss);
4. **evaluate** the base model and the student on held-in and held-out environments;
5. **report**: PNG plots and one self-contained HTML page.

Each stage writes its own run directory under `out` and is skipped when already complete, so a killed quickstart
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from refine.errors import ConfigError
from refine.quickstart_effects import effects, episode_records, render_effects

__all__ = [
    "PRESETS",
    "QuickstartConfig",
    "distill_rows",
    "effects",
    "env_items",
    "env_synth_config",
    "episode_records",
    "eval_config",
    "evaluate_model",
    "oneshot_synth_config",
    "render_effects",
    "run_quickstart",
    "synthesize_env",
]

log = logging.getLogger(__name__)

Preset = Literal["tiny", "small", "medium", "large"]

# Sizes per preset. "small" is the default and targets <= 15 minutes on 2 CPU cores; "tiny" is what CI runs.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "personas": 1,
        "env_episodes": 2,
        "distill_steps": 4,
        "distill_batch": 2,  # 4 steps = 2 epochs of the 4 trajectories: the loss falls (batch 1 never repeats one)
        "distill_checkpointing": True,
        "eval_episodes": 1,
        "eval_max_steps": 3,
        "synth_max_steps": 16,
        "max_attempts": 1,
    },
    # Sized by measurement (benchmarks/RESULTS.md, issue 19): on 2 cores evaluation costs ~4 s per reply of the base
    # model, so 4 episodes x 4 envs of 3 steps (n = 8 paired episodes per group, enough for the format effect) keep
    # the whole run under 15 minutes; 8-step episodes took 11 min per model.
    "small": {
        "personas": 1,
        "env_episodes": 4,
        "distill_steps": 16,
        "distill_batch": 1,
        "eval_episodes": 4,
        "eval_max_steps": 3,
        "synth_max_steps": 14,
        "max_attempts": 1,
    },
    "medium": {
        "personas": 16,
        "env_episodes": 40,
        "distill_steps": 200,
        "distill_batch": 2,
        "eval_episodes": 10,
        "eval_max_steps": 20,
        "synth_max_steps": 20,
        "max_attempts": 4,
    },
    "large": {
        "personas": 200,
        "env_episodes": 400,
        "distill_steps": 2000,
        "distill_batch": 2,
        "eval_episodes": 30,
        "eval_max_steps": 30,
        "synth_max_steps": 30,
        "max_attempts": 4,
    },
}


class QuickstartConfig(BaseModel):
    """Settings of `refine quickstart`; unset sizes come from the preset."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(Path("runs/quickstart"), description="Folder holding every stage's run directory.")
    preset: Preset = Field("small", description="Size preset: tiny (CI), small (default), medium, large.")
    teacher: str = Field("embedded", description="Teacher LM for one-shot synthesis (any `refine.lm` spec).")
    student: str = Field("embedded", description="Base student LM spec (also the agent of on-policy synthesis).")
    train_envs: list[str] = Field(default_factory=lambda: ["babyai", "pddl"], description="Held-in environments.")
    heldout_envs: list[str] = Field(
        default_factory=lambda: ["scienceworld", "textworld"], description="Held-out environments."
    )
    seed: int = Field(0, ge=0)
    lora: bool = Field(False, description="Distill LoRA adapters instead of all weights.")
    workers: int = Field(8, ge=1, description="Concurrent episodes / items (the embedded engine batches them).")
    personas: int | None = None
    env_episodes: int | None = None
    distill_steps: int | None = None
    distill_batch: int | None = None
    eval_episodes: int | None = None
    eval_max_steps: int | None = None
    synth_max_steps: int | None = None
    max_attempts: int | None = None
    env_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per held-in env for its training data and held-in evaluation, over the defaults "
        "(PDDL: blocks only), e.g. {'babyai': {'tasks': ['GoToObj']}} to keep other levels unseen.",
    )
    distill_lr: float | None = Field(None, gt=0, description="Distillation learning rate (default 1e-4; LoRA 5e-4).")
    timeout: float | None = Field(
        60.0, gt=0, description="Seconds one call to a remote LM may take (in-process models: unused)."
    )
    item_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds one synthesis item or evaluation episode may take in all (a guard against servers that "
        "trickle bytes); default for remote LMs: synth's timeout x 2 x attempts (x steps on envs) and eval's 20 s x "
        "steps; in-process models: none.",
    )

    def train_options(self, env: str) -> dict[str, Any]:
        """Options of held-in env `env` for on-policy data and held-in evaluation (defaults, then `env_options`)."""
        return {**_TRAIN_ENV_OPTIONS.get(env, {}), **self.env_options.get(env, {})}

    def size(self, key: str) -> int:
        value = getattr(self, key)
        return int(value if value is not None else PRESETS[self.preset][key])


Progress = Callable[[str, str], None]


def _done(path: Path) -> bool:
    return (path / "manifest.json").exists() and json.loads((path / "manifest.json").read_text()).get(
        "status"
    ) == "finished"


def oneshot_synth_config(cfg: QuickstartConfig) -> Any:
    """The `refine synth` settings of the one-shot stage: the teacher writes trajectories for built-in personas."""
    from refine.synth import SynthConfig

    return SynthConfig(
        personas="builtin",
        n=cfg.size("personas"),
        lm=cfg.teacher,
        seed=cfg.seed,
        max_attempts=cfg.size("max_attempts"),
        workers=cfg.workers,
        timeout=cfg.timeout,
        item_timeout=cfg.item_timeout,
    )


def _synth_oneshot(cfg: QuickstartConfig, out: Path) -> dict[str, Any]:
    from refine.synth import run_synth

    return run_synth(oneshot_synth_config(cfg), out, resume=out.exists())


# Held-in environments whose expert answers fast from any state (PDDL: small blocks problems only).
_TRAIN_ENV_OPTIONS: dict[str, dict[str, Any]] = {"pddl": {"tasks": ["blocks"]}}


def env_synth_config(cfg: QuickstartConfig) -> Any:
    """The `refine synth` settings of the on-policy stage: the student plays the held-in envs' train episodes and
    each env's expert fixes its mistakes (`--program interactive --env ... --refiner env`). Seed s plays episodes
    s*n .. s*n+n-1 of each env (n = env_episodes), so runs of different seeds train on disjoint episodes."""
    from refine.synth import ENV_MAX_TOKENS, SynthConfig

    n = cfg.size("env_episodes")
    return SynthConfig(
        program="interactive",
        env=list(cfg.train_envs),
        env_options={env: cfg.train_options(env) for env in cfg.train_envs if cfg.train_options(env)},
        refiner="env",
        lm=cfg.student,
        n=n,
        seed=cfg.seed * n,
        max_steps=cfg.size("synth_max_steps"),
        max_tokens=ENV_MAX_TOKENS,
        workers=min(cfg.workers, n * len(cfg.train_envs)),
        timeout=cfg.timeout,
        item_timeout=cfg.item_timeout,
    )


def env_items(cfg: QuickstartConfig) -> list[dict[str, Any]]:
    """The on-policy episodes of `cfg` (see `env_synth_config`).

    Example:
        >>> [i["key"] for i in env_items(QuickstartConfig(seed=2, env_episodes=2, train_envs=["pddl"]))]
        ['pddl-4', 'pddl-5']
    """
    from refine.synth import plan_env_items

    sc = env_synth_config(cfg)
    return plan_env_items(sc.env, sc.n, sc.seed)


def synthesize_env(cfg: QuickstartConfig, out: Path) -> dict[str, Any]:
    """On-policy refinement data: the student acts in held-in envs, the environment's expert fixes its mistakes
    (the `refine synth` stage, `env_synth_config`); returns the run's totals."""
    from refine.synth import run_synth

    return run_synth(env_synth_config(cfg), out, resume=out.exists())


def distill_rows(
    cfg: QuickstartConfig,
    sources: list[Path],
    out: Path,
    ablation: str = "masked",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Distill the accepted trajectories of `sources` into `out` (the paper's ablations via `ablation`); `progress`
    gets a line per optimizer step (step, loss) instead of the trainer's raw log dicts."""
    from refine.distill import DistillConfig, distill
    from refine.distill.provider import base_from_model_string
    from refine.distill.training_rows import load_rows

    rows: list[dict[str, Any]] = []
    for src in sources:
        if (src / "accepted.jsonl").exists():
            rows += load_rows(src)
    if not rows:
        return {"skipped": "no accepted trajectories to train on", "rows": 0}
    dc = DistillConfig(
        out=out,
        base=base_from_model_string(cfg.student),
        max_steps=cfg.size("distill_steps"),
        ablation=ablation,
        lora=cfg.lora,
        merge_lora=True,
        # Batch 1 on CPU: trajectories are kept whole (1-3k tokens), so the step count, not the batch, buys learning.
        batch_size=cfg.size("distill_batch"),
        max_length=1024,
        # Off (faster) where measured to fit; tiny's 2 whole trajectories per step without it peaked at 19.7 GB RSS
        # and were OOM-killed beside a test session on a 24 GB box.
        gradient_checkpointing=bool(PRESETS[cfg.preset].get("distill_checkpointing", False)),
        # 20 full steps on 2 cores: a rate high enough that the chat format and the envs' action forms are learned.
        learning_rate=cfg.distill_lr or (1e-4 if not cfg.lora else 5e-4),
        seed=cfg.seed,  # the training order (and LoRA init) follow the run's seed, like its data
    )
    say = progress or (lambda line: log.debug("distill: %s", line))

    def step_line(step: int, total: int, logs: Any) -> None:
        say(f"step {step}/{total}" + (f"  loss {logs['loss']:.4f}" if "loss" in logs else ""))

    result = distill(rows, dc, source=", ".join(str(s) for s in sources), progress=step_line)
    return {
        "rows": len(rows),
        "steps": result.steps,
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "model": result.model_string,
    }


def evaluate_model(
    cfg: QuickstartConfig,
    model: str,
    out: Path,
    *,
    envs: list[str] | None = None,
    env_options: dict[str, dict[str, Any]] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Evaluate a ChatAgent on `model` over the held-in and held-out environments (or `envs`); returns the summary.

    `seed` (default `cfg.seed`) picks the evaluation episodes: models evaluated with the same seed play the same ones.
    """
    from refine.eval import evaluate
    from refine.lm import resolve_lm
    from refine.lm.resolve import is_remote
    from refine.programs.agent import ChatAgent

    ec = eval_config(cfg, model, envs=envs, env_options=env_options, seed=seed)
    # 64 tokens: a refinement turn's thought (one or two short sentences) plus its action fits; 48 cut some.
    settings: dict[str, Any] = {"max_tokens": 64}
    if is_remote(model) and cfg.timeout:
        settings["timeout"] = cfg.timeout
    agent = ChatAgent(resolve_lm(model, **settings))
    result = evaluate(agent, ec, out, resume=out.exists())
    return result.summary


def eval_config(
    cfg: QuickstartConfig,
    model: str,
    *,
    envs: list[str] | None = None,
    env_options: dict[str, dict[str, Any]] | None = None,
    seed: int | None = None,
) -> Any:
    """The `EvalConfig` of `evaluate_model` (its arguments): the held-in and held-out envs at the preset's size, and
    for a remote `model` an episode deadline (`item_timeout`, default 20 s x steps as `refine eval`'s)."""
    from refine.eval import EvalConfig
    from refine.lm.resolve import is_remote

    max_steps = cfg.size("eval_max_steps")
    deadline = cfg.item_timeout
    if deadline is None and is_remote(model):
        from refine.eval.config import EPISODE_S_PER_STEP

        deadline = EPISODE_S_PER_STEP * max_steps
    return EvalConfig(
        envs=envs or [*cfg.train_envs, *cfg.heldout_envs],
        episodes=cfg.size("eval_episodes"),
        seed=cfg.seed if seed is None else seed,
        max_steps=max_steps,
        workers=cfg.workers,
        held_in=[e for e in cfg.train_envs if e in (envs or cfg.train_envs)],
        env_options=env_options if env_options is not None else {env: cfg.train_options(env) for env in cfg.train_envs},
        agent="chat",
        model=model,
        episode_timeout=deadline,
    )


def run_quickstart(config: QuickstartConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) the whole loop; returns the summary also written to `<out>/quickstart.json`."""
    from refine.envs import ENVIRONMENTS

    say = progress or (lambda stage, msg: log.info("%s: %s", stage, msg))
    unknown = [e for e in [*config.train_envs, *config.heldout_envs] if e not in ENVIRONMENTS]
    if unknown:
        names = ", ".join(e for e in ENVIRONMENTS if e != "toy")
        raise ConfigError(f"Unknown environments {unknown}; use {names}.")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "quickstart.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["config"] = config.model_dump(mode="json")
    timings: dict[str, float] = summary.setdefault("seconds", {})

    def stage(name: str, fn: Callable[[], Any], done: bool) -> Any:
        if done and name in summary:
            say(name, "already done (resumed)")
            return summary[name]
        say(name, "running")
        t0 = time.perf_counter()
        summary[name] = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        say(name, f"done in {timings[name]:.0f} s")
        return summary[name]

    synth_dir, env_dir = out / "synth", out / "synth_env"
    student_dir = out / "student"
    stage("synth", lambda: _synth_oneshot(config, synth_dir), _done(synth_dir))
    stage("synth_env", lambda: synthesize_env(config, env_dir), _done(env_dir))
    distilled = stage(
        "distill",
        lambda: distill_rows(config, [synth_dir, env_dir], student_dir, progress=lambda line: say("distill", line)),
        (student_dir / "config.json").exists(),
    )
    models = {"base": config.student}
    if (student_dir / "config.json").exists():
        models["student"] = f"local/{student_dir}"
    for label, model in models.items():
        stage(
            f"eval_{label}",
            lambda m=model, lab=label: evaluate_model(config, m, out / f"eval_{lab}"),
            _done(out / f"eval_{label}"),
        )

    if "student" in models:
        summary["effects"] = effects(
            episode_records(out / "eval_base"), episode_records(out / "eval_student"), config.train_envs
        )

    def report() -> dict[str, Any]:
        from refine.eval.report import build_report

        files = build_report([out / f"eval_{label}" for label in models], out / "report")
        return {k: str(v) for k, v in files.items()}

    stage("report", report, False)
    summary["distill"] = distilled
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return summary
