"""`refine eval` (held-out evaluation on text environments) and `refine report` (plots + self-contained HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refine.cli._common import ApiBaseOption, ApiKeyEnvOption, check_agent_lm
from refine.cli._config import configurable
from refine.executor import ExecutorOption, RayAddressOption
from refine.preflight import lm_options

AGENT_HELP = (
    "The agent: an LM spec for the chat agent ('embedded', 'local/<student dir>', 'hf/<repo>', a LiteLLM string, "
    "'py:package.module:factory'), 'chat' or "
    "'program' (DSPy PlayerAct agent) with --lm, 'program:<saved.json>', 'package.module:factory', or a reference "
    "agent: 'expert' (each env's own solver, the upper bound) or 'random' (a random valid action, the lower bound)."
)
SUITE_HELP = (
    "'refine' (this project's environments, the default) or 'agentboard' (AgentBoard's action spaces, level lists, "
    "subgoal progress and success rules where they can be reproduced offline; envs babyai, scienceworld, pddl)."
)

#: The eval stage's default per-episode deadline per step (refine.eval.config.EPISODE_S_PER_STEP, which the quickstart
#: uses too), restated because the CLI root must not import the eval stage; tests/test_cli.py pins them equal.
EPISODE_S_PER_STEP = 20.0
_AGENT_NAMES = ("expert", "random", "chat", "program", "embedded")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _with_ci(m: dict, metric: str) -> str:
    ci = m.get(f"{metric}_ci")
    rate = 100 * m[f"{metric}_rate"]
    return f"{rate:.0f} [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else f"{rate:.1f}"


def _print_solvable(summary: dict) -> None:
    """A second table where environments flag their episodes: success over the solvable ones beside the plain rate."""
    from rich.console import Console
    from rich.table import Table

    rows = [(env, e["base"]) for env, e in summary["envs"].items() if "solvable" in e.get("base", {})]
    if "solvable" in summary.get("overall", {}).get("base", {}):
        rows.append(("overall", summary["overall"]["base"]))
    if not rows:
        return
    table = Table(caption="solvable: the env's expert reaches the goal within the step bound; 95% intervals")
    for col in ("env", "n", "solvable", "succ% all", "succ% solvable", "prog% solvable"):
        table.add_column(col, justify="left" if col == "env" else "right", no_wrap=True)
    for name, m in rows:
        sv = m["solvable"]
        flagged = f"{sv['n']} of {sv['n'] + sv['unsolvable']}"
        flagged += f" ({sv['unflagged']} unflagged)" if sv["unflagged"] else ""
        table.add_row(name, str(m["episodes"]), flagged, _with_ci(m, "success"), _with_ci(sv, "success"),
                      _with_ci(sv, "progress"))  # fmt: skip
    Console().print(table)


def eval_cmd(
    agent: Annotated[str, typer.Option("--agent", "-a", help=AGENT_HELP)] = "embedded",
    lm: Annotated[str | None, typer.Option(help="LM for --agent chat/program (default: embedded).")] = None,
    api_base: ApiBaseOption = None,
    api_key_env: ApiKeyEnvOption = None,
    envs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated environments (default: babyai,scienceworld,pddl,textworld; agentboard: "
            "babyai,scienceworld,pddl)."
        ),
    ] = None,
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1, help="Episodes per environment.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Episode i uses seed + i (same tasks for every agent).")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (episodes.jsonl, summary.json).")
    ] = None,
    perturb: Annotated[bool, typer.Option("--perturb", help="Also play each episode with reworded actions.")] = False,
    max_steps: Annotated[int, typer.Option(min=1, help="Step bound per episode (AgentBoard: 30).")] = 30,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Episodes played in parallel.")] = 8,
    held_in: Annotated[str, typer.Option(help="Comma-separated environments the agent was trained on.")] = "",
    max_tokens: Annotated[int, typer.Option(min=1, help="Max new tokens per agent turn.")] = 96,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature of the agent.")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (same settings).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds one call to a remote LM may take (in-process: unused).")
    ] = None,
    episode_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help=f"Seconds one episode may take in all, a guard against servers that trickle bytes (default for "
            f"remote LMs: {EPISODE_S_PER_STEP:g} s x --max-steps; in-process models and reference agents: none). "
            "An episode past it is left pending; --resume plays it again.",
        ),
    ] = None,
    suite: Annotated[str, typer.Option(help=SUITE_HELP)] = "refine",
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="With --suite agentboard: AgentBoard's data folder; DIR/<task>/test.jsonl subgoals are "
            "used verbatim (else subgoals are derived, and the summary says so)."
        ),
    ] = None,
) -> None:
    """Evaluate an agent on held-out text environments (success, progress, invalid and stuck rates, tokens)."""
    from rich.console import Console
    from rich.table import Table

    from refine.errors import ConfigError, RunFailedError
    from refine.eval import SUITES, EvalConfig, check_config, evaluate
    from refine.eval.reference_agents import REFERENCE_AGENTS, reference_agent
    from refine.preflight import check_name
    from refine.programs.agent import resolve_agent

    suite = suite.strip().lower()
    check_name(suite, SUITES, "suite", "--suite")
    if not any(c in agent for c in "/:."):
        check_name(agent, _AGENT_NAMES, "agent", "--agent", strict=False)  # a near miss of a named agent
    if annotations is not None and suite != "agentboard":
        raise ConfigError("--annotations holds AgentBoard's subgoals; use it with --suite agentboard.")
    if annotations is not None and not annotations.is_dir():
        raise ConfigError(f"--annotations {annotations} is not a folder; pass AgentBoard's data folder (DIR/<task>/).")
    if envs is None:
        envs = "babyai,scienceworld,pddl" if suite == "agentboard" else "babyai,scienceworld,pddl,textworld"
    reference = agent in REFERENCE_AGENTS
    spec = None if reference else _lm_spec(agent, lm)
    remote = spec is not None and _is_remote(spec)
    if episode_timeout is None and remote:
        episode_timeout = EPISODE_S_PER_STEP * max_steps
    config = EvalConfig(
        suite=suite,
        annotations=str(annotations) if annotations else None,
        decoding={} if reference else {"temperature": temperature, "max_tokens": max_tokens},
        envs=_split(envs),
        episodes=episodes,
        seed=seed,
        max_steps=max_steps,
        workers=workers,
        perturb=perturb,
        held_in=_split(held_in),
        agent=agent,
        model=agent if reference else (lm or agent),
        episode_timeout=episode_timeout,
    )
    check_config(config, reference_agent(agent) if reference else None)  # before any LM or environment starts
    if not reference:
        check_agent_lm(agent, lm, api_base=api_base, api_key_env=api_key_env, timeout=timeout)
    lm_kw = {"max_tokens": max_tokens, "temperature": temperature, **lm_options(api_base, api_key_env)}
    if timeout is not None and remote:
        lm_kw["timeout"] = timeout
    if reference and executor == "ray":
        import functools

        the_agent = functools.partial(reference_agent, agent)
    elif reference:
        the_agent = reference_agent(agent)
    elif executor == "ray":  # each Ray worker builds the agent (and its LM) itself
        import functools

        the_agent = functools.partial(resolve_agent, agent, lm, **lm_kw)
    else:
        the_agent = resolve_agent(agent, lm, **lm_kw)
    console = Console(stderr=True)
    with _EvalProgress(config, out if resume else None, console, quiet) as progress:
        result = evaluate(
            the_agent,
            config,
            out,
            resume=resume,
            on_episode=progress.episode,
            on_step=progress.step,
            executor=executor,
            ray_address=ray_address,
        )
    summary = result.summary
    failure = summary["run"].get("failure")
    if failure:  # no results table for an agent that never acted
        where = "; the manifest says 'failed'" if out else ""
        raise RunFailedError(f"The evaluation failed ({failure}){where}. Fix the cause and rerun.")
    table = Table(
        title=f"refine eval ({config.suite} suite, {config.max_steps} steps): {config.model}"
        + (f" -> {out}" if out else ""),
        caption="succ% and prog% with their 95% interval",
    )
    # Short headers: the table must stay readable in an 80-column terminal.
    for col in ("env", "split", "actions", "n", "succ%", "prog%", "inv%", "stuck%", "steps", "tokens"):
        table.add_column(col, justify="left" if col in ("env", "split", "actions") else "right", no_wrap=True)
    rows = [(env, e) for env, e in summary["envs"].items()] + [("overall", summary["overall"])]
    for name, entry in rows:
        for variant in summary["variants"]:
            m = entry.get(variant)
            if not m:
                continue
            split = "" if name == "overall" else ("held-in" if entry.get("held_in") else "held-out")
            table.add_row(
                name,
                split,
                "reworded" if variant == "perturbed" else "original",
                str(m["episodes"]),
                _with_ci(m, "success"),
                _with_ci(m, "progress"),
                f"{100 * m['invalid_rate']:.1f}",
                f"{100 * m['stuck_rate']:.1f}",
                f"{m['mean_steps']:.1f}",
                f"{m['prompt_tokens'] + m['completion_tokens']}",
            )
    Console().print(table)
    _print_solvable(summary)
    drop = summary["overall"].get("drop")
    if drop:
        Console().print(
            f"Robustness drop (original - reworded): success {100 * drop['success_rate']:+.1f} pts, "
            f"progress {100 * drop['progress_rate']:+.1f} pts"
        )
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    errors = summary["overall"]["base"].get("errors", 0)
    if errors:
        console.print(f"[yellow]{errors} episode(s) ended with an error; see 'error' in episodes.jsonl[/]")
    run = summary.get("run", {})
    if run.get("episodes_per_min"):
        console.print(
            f"{run['episodes_played']} episodes in {run['wall_s']:.1f} s "
            f"({run['episodes_per_min']:.1f} episodes/min, {config.workers} workers)"
        )


def _lm_spec(agent: str, lm: str | None) -> str | None:
    """The LM spec behind --agent (or --lm), as `check_agent_lm` reads it, without checking it."""
    module, sep, _ = agent.partition(":")
    if agent in ("chat", "program") or agent.startswith("program:"):
        return lm or "embedded"
    if sep and "." in module and "/" not in module and not Path(agent).exists():
        return lm
    return agent


def _is_remote(spec: str) -> bool:
    from refine.lm.resolve import is_remote

    return is_remote(spec)


class _EvalProgress:
    """eval's progress bar: episodes, solved, steps, tokens, elapsed and ETA, moved on every step (an episode in
    play counts as the share of --max-steps it has played, so the ETA is there before the first episode ends)."""

    def __init__(self, config: object, resumed: Path | None, console: object, quiet: bool) -> None:
        import threading

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from refine.eval import episode_specs

        self.max_steps = config.max_steps  # type: ignore[attr-defined]
        self.done = self._already_done(resumed)
        self.solved = self.pending = self.steps = self.tokens = 0
        self.playing: dict[str, int] = {}
        self._lock = threading.Lock()
        self.bar = Progress(
            TextColumn("[bold]eval"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.total:.0f} episodes"),
            TextColumn("[green]{task.fields[solved]} solved[/]{task.fields[pending]}"),
            TextColumn("{task.fields[steps]:,} steps  {task.fields[tokens]:,} tokens"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        )
        total = len(episode_specs(config))  # type: ignore[arg-type]
        self.task = self.bar.add_task(
            "eval", total=total, completed=self.done, done=self.done, solved=0, pending="", steps=0, tokens=0
        )

    @staticmethod
    def _already_done(resumed: Path | None) -> int:
        if resumed is None or not (resumed / "manifest.json").is_file():
            return 0
        from refine.store import RunStore

        try:
            return RunStore.open_existing(resumed).count("episodes")
        except Exception:  # the run store reports an unreadable run with its own message
            return 0

    def __enter__(self) -> _EvalProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def _show(self) -> None:
        partial = sum(min(n / self.max_steps, 0.95) for n in self.playing.values())
        self.bar.update(
            self.task,
            completed=self.done + self.pending + partial,
            done=self.done,
            solved=self.solved,
            pending=f" [yellow]{self.pending} pending[/]" if self.pending else "",
            steps=self.steps,
            tokens=self.tokens,
        )

    def step(self, info: dict) -> None:
        with self._lock:
            key = str(info.get("key"))
            self.playing[key] = self.playing.get(key, 0) + 1
            self.steps += 1
            self.tokens += int(info.get("prompt_tokens") or 0) + int(info.get("completion_tokens") or 0)
            self._show()

    def episode(self, rec: dict) -> None:
        with self._lock:
            self.playing.pop(str(rec.get("key")), None)
            if rec.get("pending"):
                self.pending += 1
            else:
                self.done += 1
                self.solved += int(bool(rec.get("success")))
            self._show()


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `refine eval --out`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs and report.html.")] = Path("report"),
) -> None:
    """Render plots and one self-contained HTML page (tables + trajectory viewer) from eval runs."""
    from rich.console import Console

    from refine.eval.report import build_report

    files = build_report(runs, out)
    for name, path in files.items():
        Console().print(f"{name}: {path}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("eval")(configurable(eval_cmd))
    app.command("report")(report_cmd)
