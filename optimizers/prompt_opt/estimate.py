"""Estimate the LM calls and tokens of an optimization run before it starts.

The number of *program runs* comes from the optimizer's own budget parameters (MIPROv2's trial formula and
`AUTO_RUN_SETTINGS`, GEPA's `auto_budget`, BootstrapFewShot's trainset passes) plus the before/after devset
evaluations. LM calls per program run come from the graph: each predictor node counts once, nodes on a loop count up
to the loop's `max_iters` bound. Tokens per call come from formatting each predictor's real prompt with the
ChatAdapter (example inputs where known), at ~4 characters per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import dspy

from refine.optimizers.prompt_opt.config import BOOTSTRAP_PRESETS

__all__ = ["CostEstimate", "calls_per_run", "estimate_cost", "predictor_prompt_tokens"]

_CHARS_PER_TOKEN = 4
_UNKNOWN_INPUT_CHARS = 600  # an input produced upstream (script, history): typical size
_OUTPUT_TOKENS = 150  # expected completion size when max_tokens is larger
_REFLECTION_FACTOR = 4  # a GEPA/MIPRO proposer prompt holds instructions + several traces


@dataclass
class CostEstimate:
    """Expected and worst-case LM calls/tokens of a run; `program_runs` splits where the runs go."""

    method: str
    preset: str
    calls_per_run_min: int
    calls_per_run_max: int
    tokens_per_call: int
    program_runs: dict[str, int]
    proposer_calls: int
    calls: int
    calls_max: int
    tokens: int
    tokens_max: int
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fits(self, max_calls: int | None, max_tokens: int | None) -> bool:
        """Whether even the worst case stays within the budget."""
        return (max_calls is None or self.calls_max <= max_calls) and (
            max_tokens is None or self.tokens_max <= max_tokens
        )

    def to_text(self) -> str:
        runs = ", ".join(f"{k} {v}" for k, v in self.program_runs.items())
        per_run = (
            str(self.calls_per_run_min)
            if self.calls_per_run_min == self.calls_per_run_max
            else f"{self.calls_per_run_min}-{self.calls_per_run_max}"
        )
        lines = [
            f"Estimate for {self.method} ({self.preset}): ~{self.calls:,} LM calls (at most ~{self.calls_max:,}), "
            f"~{self.tokens:,} tokens (at most ~{self.tokens_max:,}).",
            f"  program runs: {runs}; LM calls per run: {per_run}; proposer/reflection calls: {self.proposer_calls}; "
            f"~{self.tokens_per_call:,} tokens per call.",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _graph_of(program: dspy.Module) -> Any:
    return getattr(program, "graph", None)


def calls_per_run(program: dspy.Module) -> tuple[int, int]:
    """(fewest, most) predictor calls one run of `program` makes.

    For a `GraphModule`: the fewest counts the predictor nodes every run reaches (through unconditional edges from
    the entry, once each); the most lets every node run, and nodes on a loop run once plus the `max_iters` of the
    bounded edges of their loop. Other modules: one call per predictor.
    """
    graph = _graph_of(program)
    if graph is None:
        n = len(program.predictors())
        return n, n
    import networkx as nx

    g = graph.nx_graph
    edges = graph._edges
    must = set(graph.get_entry_nodes())
    frontier = list(must)
    while frontier:
        src = frontier.pop()
        for e in edges:
            if e.src == src and e.condition is None and e.max_iters is None and e.dst not in must:
                must.add(e.dst)
                frontier.append(e.dst)
    lo = hi = 0
    sccs = list(nx.strongly_connected_components(g))
    for name in graph.node_names:
        node = graph.get_node(name)
        if not isinstance(node, dspy.Module):
            continue
        k = max(1, len(node.predictors()))
        comp = next(c for c in sccs if name in c)
        looped = len(comp) > 1 or g.has_edge(name, name)
        extra = sum(e.max_iters or 0 for e in edges if e.src in comp and e.dst in comp) if looped else 0
        lo += k if name in must else 0
        hi += k * (1 + extra)
    return lo, hi


def predictor_prompt_tokens(program: dspy.Module, example: dict[str, Any] | None = None) -> int:
    """Average prompt tokens of one predictor call: each predictor's ChatAdapter prompt with the example's values
    for inputs it knows, and a typical-size placeholder for inputs produced inside the program."""
    adapter = dspy.ChatAdapter()
    sizes = []
    for _, pred in program.named_predictors():
        sig = pred.signature
        inputs = {}
        for f in sig.input_fields:
            v = (example or {}).get(f)
            inputs[f] = str(v) if v is not None else "x" * _UNKNOWN_INPUT_CHARS
        try:
            msgs = adapter.format(sig, demos=list(pred.demos), inputs=inputs)
            chars = sum(len(str(m.get("content", ""))) for m in msgs)
        except Exception:  # exotic field types: fall back to the raw sizes
            chars = len(sig.instructions) + sum(len(v) for v in inputs.values()) + 200
        sizes.append(chars / _CHARS_PER_TOKEN)
    return math.ceil(sum(sizes) / len(sizes)) if sizes else 0


def _mipro_runs(n_train: int, num_preds: int, preset: str) -> tuple[int, int, int, list[str]]:
    """(bootstrap runs, evaluation runs, proposer calls, notes) following MIPROv2's own formulas."""
    from dspy.teleprompt.mipro_optimizer_v2 import AUTO_RUN_SETTINGS, MIN_MINIBATCH_SIZE

    n = AUTO_RUN_SETTINGS[preset]["n"]
    val = min(1000, max(1, int(n_train * 0.8)))  # MIPROv2 splits the trainset when no valset is given
    train = max(n_train - val, 1)
    val = min(val, AUTO_RUN_SETTINGS[preset]["val_size"])
    num_vars = 2 * num_preds  # instructions + demos
    trials = int(max(2 * num_vars * math.log2(n), 1.5 * n))
    minibatch = val > MIN_MINIBATCH_SIZE
    if minibatch:
        mb = min(35, val)
        evals = mb * trials + val * (trials // 5 + 1)
    else:
        evals = val * (trials + 1)
    bootstrap = max(n - 2, 0) * train  # candidate demo sets; each BootstrapFewShot pass may run the whole split
    num_instruct = max(n // 2, 1)
    proposer = 10 + num_instruct * num_preds + num_preds + 1
    notes = [f"MIPROv2 {preset}: {n} candidates, {trials} trials, valset {val} (split from the trainset)"]
    return bootstrap, evals, proposer, notes


def _gepa_runs(n_train: int, num_preds: int, preset: str) -> tuple[int, int, list[str]]:
    from dspy.teleprompt.gepa.gepa import AUTO_RUN_SETTINGS, GEPA

    n = AUTO_RUN_SETTINGS[preset]["n"]
    metric_calls = GEPA.auto_budget(None, max(num_preds, 1), n, n_train)  # type: ignore[arg-type]
    # Each iteration evaluates a reflection minibatch (3) for the parent and the child, after one reflection call.
    reflections = math.ceil(metric_calls / 6)
    notes = [f"GEPA {preset}: max_metric_calls={metric_calls} (GEPA.auto_budget, trainset used as valset)"]
    return metric_calls, reflections, notes


def estimate_cost(
    program: dspy.Module,
    method: str,
    preset: str,
    n_train: int,
    n_dev: int,
    example: dict[str, Any] | None = None,
    max_output_tokens: int | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> CostEstimate:
    """Estimate LM calls/tokens of optimizing `program` with `method` at `preset` (no LM call is made).

    `optimizer_kwargs` are the extra optimizer arguments of the run (GEPA `max_metric_calls`, bootstrap demo counts).
    """
    okw = optimizer_kwargs or {}
    lo, hi = calls_per_run(program)
    num_preds = max(1, len(program.predictors()))
    prompt_tokens = predictor_prompt_tokens(program, example)
    out_tokens = min(_OUTPUT_TOKENS, max_output_tokens) if max_output_tokens else _OUTPUT_TOKENS
    notes: list[str] = []
    runs: dict[str, int] = {"devset before/after": 2 * n_dev}
    proposer = 0
    demo_tokens = 0
    if method == "bootstrap":
        p = {**BOOTSTRAP_PRESETS[preset], **{k: v for k, v in okw.items() if k in BOOTSTRAP_PRESETS[preset]}}
        runs["bootstrap"] = n_train * p["max_rounds"]
        demo_tokens = (p["max_bootstrapped_demos"] + p["max_labeled_demos"]) * (prompt_tokens // 2 + out_tokens)
        notes.append(
            f"BootstrapFewShot {preset}: up to {p['max_bootstrapped_demos']} bootstrapped + "
            f"{p['max_labeled_demos']} labeled demos, {p['max_rounds']} round(s); stops early once demos are found"
        )
    elif method == "mipro":
        boot, evals, proposer, n = _mipro_runs(n_train, num_preds, preset)
        runs["bootstrap demos"] = boot
        runs["trial evaluations"] = evals
        demo_tokens = 4 * (prompt_tokens // 2 + out_tokens)
        notes += n
    elif method == "gepa":
        metric_calls, proposer, n = _gepa_runs(n_train, num_preds, preset)
        if okw.get("max_metric_calls"):
            metric_calls = int(okw["max_metric_calls"])
            proposer = math.ceil(metric_calls / 6)
            n = [f"GEPA: max_metric_calls={metric_calls} (given)"]
        runs["metric calls"] = metric_calls
        notes += n
    else:
        from refine.errors import ConfigError

        raise ConfigError(f"Unknown method {method!r}; use bootstrap, mipro or gepa.")
    total_runs = sum(runs.values())
    per_call = prompt_tokens + out_tokens
    per_call_demos = per_call + demo_tokens // 2  # about half the runs carry demos (after bootstrapping)
    proposer_tokens = _REFLECTION_FACTOR * per_call
    mid = (lo + hi) / 2
    calls = math.ceil(total_runs * mid) + proposer
    calls_max = total_runs * hi + proposer
    tokens = math.ceil(total_runs * mid * per_call_demos) + proposer * proposer_tokens
    tokens_max = total_runs * hi * (per_call + demo_tokens) + proposer * proposer_tokens * 2
    if hi > lo:
        notes.append(f"loops make a run cost {lo}-{hi} calls; the estimate takes the midpoint, the maximum the bound")
    return CostEstimate(
        method=method,
        preset=preset,
        calls_per_run_min=lo,
        calls_per_run_max=hi,
        tokens_per_call=per_call,
        program_runs=runs,
        proposer_calls=proposer,
        calls=calls,
        calls_max=calls_max,
        tokens=tokens,
        tokens_max=tokens_max,
        notes=notes,
    )
