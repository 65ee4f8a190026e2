"""Run one prompt optimization of a refinement program with DSPy's own optimizers (BootstrapFewShot, MIPROv2,
GEPA) under a hard LM budget: estimate, score the devset, compile, score again, save program + report.

Example (Python; the CLI is `refine optimize`)::

    from refine.optimizers import optimize

    result = optimize("self_refine", method="gepa", preset="light", trainset="train.jsonl",
                      devset="dev.jsonl", lm="embedded", max_calls=2000, out="runs/opt")
    print(result.score_before, result.score_after, result.spend.calls)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dspy
from pydantic import ValidationError

from refine.errors import ConfigError, RunFailedError
from refine.lm.resolve import is_remote
from refine.lm.resolve import resolve_lm as _resolve_lm
from refine.optimizers.metrics import Metric, default_metric_for, resolve_metric
from refine.optimizers.prompt_opt.artifacts import (
    REPORT_FILE,
    PredictorChange,
    changes_to_dicts,
    diff_programs,
    save_optimized,
)
from refine.optimizers.prompt_opt.budget import Budget, BudgetExhaustedError, Spend
from refine.optimizers.prompt_opt.config import BOOTSTRAP_PRESETS, OptimizeConfig, load_examples, to_examples
from refine.optimizers.prompt_opt.estimate import CostEstimate, estimate_cost

__all__ = ["OptimizeResult", "check_gepa_checkpoint", "evaluate_program", "optimize", "resolve_lm"]

logger = logging.getLogger(__name__)

Status = Literal["completed", "budget_exhausted", "dry_run"]
EventHook = Callable[[str, dict[str, Any]], None]


@dataclass
class OptimizeResult:
    """The outcome of `optimize`: the (optimized) program, devset scores, spend, changes and output paths."""

    program: dspy.Module
    config: OptimizeConfig
    estimate: CostEstimate
    status: Status
    score_before: float | None = None
    score_after: float | None = None
    spend: Spend = field(default_factory=Spend)
    changes: list[PredictorChange] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""

    @property
    def improved(self) -> bool:
        return self.score_before is not None and self.score_after is not None and self.score_after > self.score_before


def resolve_lm(spec: str | dspy.BaseLM | None, **lm_kwargs: Any) -> dspy.BaseLM | None:
    """`refine.lm.resolve.resolve_lm` (the one LM-spec resolver), with None passed through (use `dspy.settings.lm`)."""
    return None if spec is None else _resolve_lm(spec, **lm_kwargs)


def _remote_settings(spec: str | dspy.BaseLM | None, cfg: OptimizeConfig) -> dict[str, Any]:
    """`resolve_lm` settings of a spec: the call timeout, for remote LMs only (LM objects are used as given)."""
    return {"timeout": cfg.timeout} if spec is not None and cfg.timeout and is_remote(spec) else {}


def _prepare_program(program: Any, cfg: OptimizeConfig) -> tuple[dspy.Module, tuple[str, ...], tuple[str, ...] | None]:
    """(fresh module to optimize, its input fields, its declared outputs)."""
    from refine.graph import GraphModule, ProgramGraph
    from refine.programs_registry import load_program

    if program is None:
        program = cfg.program
    if program is None:
        raise ConfigError("No program to optimize: pass a built-in name, 'package.module:attr' or a ProgramGraph.")
    if isinstance(program, str | Path | ProgramGraph):  # a name, 'module:attr', a saved folder or a graph
        spec = str(program) if isinstance(program, Path) else program
        module = load_program(spec, cfg.trust_program, **cfg.program_options)
    elif isinstance(program, dspy.Module):
        module = program.deepcopy()
    else:
        raise ConfigError(f"Cannot optimize a {type(program).__name__}; pass a ProgramGraph or a dspy.Module.")
    if not module.predictors():
        raise ConfigError(
            f"Program {cfg.program or type(module).__name__} has no DSPy predictors, so there is nothing to optimize."
        )
    if isinstance(module, GraphModule):
        # Rows may also set fields that have defaults (e.g. `seed`/`script` of the interactive program).
        g = module.graph
        return module, (*g.inputs, *(k for k in g.defaults if k not in g.inputs)), g.outputs
    preds = module.predictors()
    return module, tuple(preds[0].signature.input_fields), None


def _examples(data: Any, path: Path | None, inputs: Sequence[str], what: str) -> list[dspy.Example] | None:
    if data is None and path is not None:
        data = path
    if data is None:
        return None
    if isinstance(data, str | Path):
        return load_examples(data, inputs)
    return to_examples(data, inputs, source=what)


def _score(metric: Metric) -> Callable[..., float]:
    def score(gold: Any, pred: Any, trace: Any = None) -> float:
        return float(metric(gold, pred, trace).score)

    score.__name__ = getattr(metric, "__name__", "metric")
    return score


def evaluate_program(
    program: dspy.Module, devset: list[dspy.Example], metric: Metric, num_threads: int = 1
) -> tuple[float, int]:
    """Mean metric score in [0, 1] over `devset` (a failed run scores 0) and the number of failed runs."""
    if not devset:
        return 0.0, 0
    ev = dspy.Evaluate(
        devset=devset,
        metric=_score(metric),
        num_threads=num_threads,
        display_progress=False,
        display_table=False,
        max_errors=len(devset) + 1,
        provide_traceback=False,
        failure_score=0.0,
    )
    res = ev(program)
    failed = sum(1 for _, p, _ in res.results if p is None or (isinstance(p, dspy.Prediction) and not p.keys()))
    return float(res.score) / 100.0, failed


# Pickle opcodes that import or call anything; a checkpoint without them holds only built-in data (dicts, lists,
# strings, numbers), which is what GEPA writes, so loading it can run no code.
_CODE_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4"}
    | {"PERSID", "BINPERSID"}
)
GEPA_CHECKPOINT = "gepa_state.bin"


def check_gepa_checkpoint(log_dir: Path | None, allow_unsafe: bool = False) -> None:
    """Refuse a GEPA checkpoint that GEPA would `pickle.load` if it could run code, unless `allow_unsafe`.

    GEPA resumes from `<log_dir>/gepa_state.bin`, a pickle. A planted pickle runs whatever it names when loaded, so
    the file is read as opcodes first (nothing is executed): one that imports or calls anything is refused.

    Raises:
        ConfigError: the checkpoint names code (or is unreadable) and `allow_unsafe` is not set.
    """
    import pickletools

    if log_dir is None or allow_unsafe:
        return
    path = Path(log_dir) / GEPA_CHECKPOINT
    if not path.is_file():
        return
    fix = (
        f"Delete {path} (or pick another --log-dir) to start over, or pass --unsafe-pickle-checkpoint "
        "(unsafe_pickle_checkpoint=True) if you wrote it yourself: loading it runs any code it names."
    )
    try:
        ops = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    except Exception as exc:  # truncated or not a pickle: GEPA could not resume from it either
        raise ConfigError(f"The GEPA checkpoint {path} is unreadable ({type(exc).__name__}: {exc}). {fix}") from None
    named = sorted(ops & _CODE_OPCODES)
    if named:
        raise ConfigError(
            f"The GEPA checkpoint {path} holds Python objects, not only data (pickle opcodes {', '.join(named)}), so "
            f"resuming from it could run code. {fix}"
        )


def _gepa_log_dir(cfg: OptimizeConfig) -> Path | None:
    given = cfg.optimizer_kwargs.get("log_dir")
    if given:
        return Path(given)
    return cfg.log_dir or (cfg.out / "gepa" if cfg.out is not None else None)


def _build_optimizer(
    cfg: OptimizeConfig, metric: Metric, task_lm: dspy.BaseLM, reflection_lm: dspy.BaseLM, budget: Budget
) -> Any:
    """The DSPy optimizer for `cfg.method`, with its budget knobs from `cfg.preset`."""
    if cfg.method == "bootstrap":
        # Only fully successful runs become demos.
        kw = {"metric_threshold": 1.0, **BOOTSTRAP_PRESETS[cfg.preset], **cfg.optimizer_kwargs}
        return dspy.BootstrapFewShot(metric=_score(metric), **kw)
    if cfg.method == "mipro":
        kw = {"auto": cfg.preset, "num_threads": cfg.num_threads, "seed": cfg.seed, "verbose": False}
        kw.update(cfg.optimizer_kwargs)
        return dspy.MIPROv2(metric=_score(metric), prompt_model=reflection_lm, task_model=task_lm, **kw)
    log_dir = _gepa_log_dir(cfg)
    check_gepa_checkpoint(log_dir, cfg.unsafe_pickle_checkpoint)

    def stop_when_spent(_state: Any) -> bool:
        # Stop between iterations once a call was refused: GEPA then returns its best candidate so far.
        return budget.exhausted

    kw = {
        "auto": cfg.preset,
        "num_threads": cfg.num_threads,
        "seed": cfg.seed,
        "log_dir": str(log_dir) if log_dir is not None else None,
        "track_stats": False,
        "gepa_kwargs": {"stop_callbacks": [stop_when_spent]},
    }
    if {"max_metric_calls", "max_full_evals"} & set(cfg.optimizer_kwargs):
        kw.pop("auto")  # GEPA takes exactly one budget
    kw.update(cfg.optimizer_kwargs)
    return dspy.GEPA(metric=metric, reflection_lm=reflection_lm, **kw)


def _adapter_for(lm: dspy.BaseLM) -> Any:
    """The configured adapter, else the project's default for this LM (grammar-constrained for in-process models)."""
    if dspy.settings.adapter is not None:
        return dspy.settings.adapter
    from refine.lm import default_adapter

    return default_adapter(lm)


def _check(budget: Budget) -> None:
    if budget.exhausted:
        raise BudgetExhaustedError(budget._message())


class _RefusalFilter(logging.Filter):
    """Drop the per-example error lines DSPy logs for calls the budget refused (the run reports them once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "BudgetExhaustedError" not in record.getMessage()


@contextlib.contextmanager
def _quiet_refusals() -> Iterator[None]:
    names = ["dspy.utils.parallelizer", "dspy.evaluate.evaluate", "dspy.teleprompt.bootstrap", "dspy.predict.predict"]
    flt = _RefusalFilter()
    for n in names:
        logging.getLogger(n).addFilter(flt)
    try:
        yield
    finally:
        for n in names:
            logging.getLogger(n).removeFilter(flt)


def _enable_mlflow(cfg: OptimizeConfig) -> bool:
    if cfg.mlflow is False:
        return False
    try:
        import mlflow
    except ImportError:
        if cfg.mlflow:
            raise ConfigError("--mlflow needs MLflow: pip install 'dspy-refine[mlflow]'.") from None
        return False
    try:
        mlflow.dspy.autolog(log_compiles=True, log_evals=True, log_traces_from_compile=False)
    except TypeError:  # older MLflow without these switches
        mlflow.dspy.autolog()
    logger.info("MLflow logging enabled through mlflow.dspy.autolog()")
    return True


def optimize(
    program: Any = None,
    *,
    trainset: Any = None,
    devset: Any = None,
    lm: str | dspy.BaseLM | None = None,
    reflection_lm: str | dspy.BaseLM | None = None,
    metric: str | Metric | None = None,
    config: OptimizeConfig | None = None,
    on_event: EventHook | None = None,
    **overrides: Any,
) -> OptimizeResult:
    """Optimize every predictor of a refinement program with a DSPy optimizer, within a hard LM budget.

    Args:
        program: a built-in name / 'package.module:attr' spec, a `ProgramGraph`, or a `dspy.Module` (not modified).
        trainset, devset: JSONL paths, dicts or `dspy.Example`s; the program's graph inputs become example inputs.
            Without a devset, before/after scores are measured on the trainset.
        lm, reflection_lm: LM objects or model strings (`resolve_lm`); default: `dspy.settings.lm`.
        metric: callable (2, 3 or 5 args), built-in name or 'module:function'; default from the program's outputs.
        config: an `OptimizeConfig`; keyword `overrides` (method=, preset=, max_calls=, out=, ...) update it.
        on_event: `fn(kind, data)` for progress: ("estimate", {...}), ("phase", {"name": ...}), ("spend", {...}).

    Returns:
        An `OptimizeResult`. When the budget runs out the run stops cleanly with `status="budget_exhausted"` and the
        best program available at that point (the baseline if the optimizer had not finished).

    Raises:
        ConfigError: bad program, datasets, metric or LM.
    """
    t0 = time.perf_counter()
    try:
        cfg = OptimizeConfig.model_validate({**(config or OptimizeConfig()).model_dump(), **overrides})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid optimize settings: {detail}") from None
    if isinstance(program, str) and not Path(program).is_dir():
        cfg = cfg.model_copy(update={"program": program})
    elif isinstance(program, str | Path) and (Path(program) / REPORT_FILE).is_file():
        # Re-optimizing a saved program: keep its spec so the new result can be rebuilt too.
        saved = json.loads((Path(program) / REPORT_FILE).read_text(encoding="utf-8")).get("config", {})
        cfg = cfg.model_copy(
            update={"program": saved.get("program"), "program_options": saved.get("program_options") or {}}
        )
    emit = on_event or (lambda kind, data: None)

    module, inputs, outputs = _prepare_program(program, cfg)
    if cfg.method == "gepa":  # before any LM call: a planted checkpoint is refused up front
        check_gepa_checkpoint(_gepa_log_dir(cfg), cfg.unsafe_pickle_checkpoint)
    train = _examples(trainset, cfg.trainset, inputs, "trainset")
    if not train:
        raise ConfigError("The trainset is empty: pass --trainset FILE (JSONL, one example per line).")
    if cfg.method == "mipro" and len(train) < 2:
        raise ConfigError("MIPROv2 needs at least 2 training examples (it splits off a validation set).")
    dev = _examples(devset, cfg.devset, inputs, "devset")
    scored_on = "devset" if dev else "trainset"
    dev = dev or train

    metric_fn = resolve_metric(metric if metric is not None else cfg.metric) if (metric or cfg.metric) else None
    metric_fn = metric_fn or default_metric_for(outputs)

    task_spec = lm if lm is not None else cfg.lm
    task_lm = resolve_lm(task_spec, **_remote_settings(task_spec, cfg)) or dspy.settings.lm
    if task_lm is None:
        raise ConfigError("No LM: pass --lm MODEL (e.g. 'embedded') or configure one with dspy.configure(lm=...).")
    refl_spec = reflection_lm if reflection_lm is not None else cfg.reflection_lm
    refl_lm = resolve_lm(refl_spec, **_remote_settings(refl_spec, cfg)) or task_lm

    max_out = (getattr(task_lm, "kwargs", {}) or {}).get("max_tokens")
    estimate = estimate_cost(
        module, cfg.method, cfg.preset, len(train), len(dev), train[0].toDict(), max_out, cfg.optimizer_kwargs
    )
    emit("estimate", {"estimate": estimate, "budget": (cfg.max_calls, cfg.max_tokens)})
    if cfg.dry_run:
        return OptimizeResult(module, cfg, estimate, "dry_run", seconds=time.perf_counter() - t0)

    budget = Budget(max_calls=cfg.max_calls, max_tokens=cfg.max_tokens)
    budget.add_listener(lambda s: emit("spend", {"spend": s}))
    task = budget.wrap(task_lm, "task")
    refl = budget.wrap(refl_lm, "reflection" if cfg.method == "gepa" else "proposer")
    _enable_mlflow(cfg)

    baseline = module.deepcopy()
    optimized: dspy.Module = baseline
    before = after = None
    phase = "baseline"
    with dspy.context(lm=task, adapter=_adapter_for(task_lm)), _quiet_refusals():
        try:
            emit("phase", {"name": phase})
            before, failed = evaluate_program(module, dev, metric_fn, cfg.num_threads)
            _check(budget)
            if dev and failed == len(dev):  # every run failed (LM down, timeouts, nothing parsed): nothing to measure
                raise RunFailedError(
                    f"every one of the {len(dev)} devset runs of the un-optimized program failed (the errors are "
                    "logged above), so there is no score to improve: check the LM (`refine lm check MODEL`), then "
                    "rerun."
                )
            phase = "optimize"
            emit("phase", {"name": f"optimize ({cfg.method}, {cfg.preset})"})
            optimizer = _build_optimizer(cfg, metric_fn, task, refl, budget)
            try:
                optimized = optimizer.compile(module, trainset=train)
            except Exception as exc:
                if not budget.exhausted:
                    raise
                raise BudgetExhaustedError(budget._message()) from exc
            _check(budget)
            phase = "final"
            emit("phase", {"name": phase})
            after, _ = evaluate_program(optimized, dev, metric_fn, cfg.num_threads)
            _check(budget)
            status: Status = "completed"
            message = ""
        except BudgetExhaustedError as exc:
            status = "budget_exhausted"
            # Scores computed with refused calls are not scores; programs compiled under refusals are the optimizer's
            # best among what it could evaluate (GEPA stops between iterations and returns its best candidate).
            if phase == "baseline":
                before = None
            after = None
            kept = "the un-optimized program" if optimized is baseline else "the optimizer's best program so far"
            message = f"{exc} Stopped during the {phase} phase; kept {kept}."
            logger.warning(message)
    spend = budget.spent
    changes = diff_programs(baseline, optimized)
    result = OptimizeResult(
        program=optimized,
        config=cfg,
        estimate=estimate,
        status=status,
        score_before=before,
        score_after=after,
        spend=spend,
        changes=changes,
        seconds=time.perf_counter() - t0,
        message=message,
    )
    if cfg.out is not None:
        report = {
            "config": copy.deepcopy(cfg.model_dump(mode="json")),
            "program_name": getattr(getattr(optimized, "graph", None), "name", type(optimized).__name__),
            "status": status,
            "message": message,
            "score_before": before,
            "score_after": after,
            "scored_on": scored_on,
            "n_train": len(train),
            "n_dev": len(dev),
            "metric": getattr(metric_fn, "__name__", str(metric_fn)),
            "budget": budget.describe(),
            "spend": spend.to_dict(),
            "estimate": estimate.to_dict(),
            "changes": changes_to_dicts(changes),
            "seconds": result.seconds,
        }
        result.paths = save_optimized(optimized, Path(cfg.out), report)
    emit("done", {"result": result})
    return result
