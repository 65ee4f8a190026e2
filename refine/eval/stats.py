"""Interval estimates for evaluation numbers: what a success or progress rate over n episodes is worth.

* `wilson(k, n)`: the 95% Wilson score interval of a proportion (success rate; per-step invalid rate);
* `bootstrap_mean(values)`: a percentile bootstrap interval of a mean in [0, 1] (progress rate);
* `stratified_bootstrap(groups)`: the interval of a macro average (each group, e.g. an environment, resampled on its
  own and weighted the same, as AgentBoard averages environments);
* `difference(a, b, paired=...)`: the difference b - a of two rates with its interval: a paired bootstrap over the
  per-episode differences when both sides played the same episodes (same environment, task and seed), else
  Newcombe's hybrid score interval for two proportions or an independent bootstrap for means.

Every bootstrap is seeded, so a summary is reproducible byte for byte.

Example:
    >>> lo, hi = wilson(7, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.397, 0.892)
    >>> wilson(0, 0)
    (0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "MIN_EPISODES",
    "Z95",
    "bootstrap_mean",
    "difference",
    "newcombe",
    "stratified_bootstrap",
    "stratified_difference",
    "wilson",
]

Z95 = 1.959963984540054
MIN_EPISODES = 20  # below this many episodes per cell a rate is flagged as too small to compare
_RESAMPLES = 2000


def wilson(k: int | float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes out of n (n == 0: the uninformative [0, 1])."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _interval(samples: list[float], lo_clip: float, hi_clip: float) -> tuple[float, float]:
    samples.sort()
    return (max(lo_clip, _percentile(samples, 0.025)), min(hi_clip, _percentile(samples, 0.975)))


def bootstrap_mean(values: Sequence[float], resamples: int = _RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean of `values` (each in [0, 1]); [0, 1] for no values."""
    return stratified_bootstrap([values], resamples=resamples, seed=seed)


def stratified_bootstrap(
    groups: Sequence[Sequence[float]], resamples: int = _RESAMPLES, seed: int = 0, lo: float = 0.0, hi: float = 1.0
) -> tuple[float, float]:
    """The 95% interval of the mean of group means, resampling within each group (empty groups are skipped)."""
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return (lo, hi)
    if all(len(set(g)) == 1 for g in groups):
        # No spread to resample (e.g. 0 of 4 solved): a bootstrap would claim certainty. The Wilson interval of the
        # same mean (the widest a variable in [0, 1] can have) is the honest answer, averaged over groups.
        if lo == 0.0 and hi == 1.0:
            bounds = [wilson(g[0] * len(g), len(g)) for g in groups]
            return (sum(b[0] for b in bounds) / len(bounds), sum(b[1] for b in bounds) / len(bounds))
        m = sum(g[0] for g in groups) / len(groups)
        return (m, m)
    import numpy as np  # a dependency of transformers; imported here to keep `import refine` light

    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for g in groups:
        arr = np.asarray(g, dtype=float)
        total += arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    return _interval((total / len(groups)).tolist(), lo, hi)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p2 - p1 for two independent proportions."""
    if n1 <= 0 or n2 <= 0:
        return (-1.0, 1.0)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p2 - p1
    lo = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return (max(-1.0, lo), min(1.0, hi))


def difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool,
    binary: bool = False,
    strata: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, float | int | bool | list[float]]:
    """The difference mean(b) - mean(a) with its 95% interval.

    Args:
        a: Per-episode values of the first (reference) run.
        b: Per-episode values of the second run; with `paired`, `b[i]` is the same episode as `a[i]`.
        paired: Bootstrap the per-episode differences (the two runs played the same episodes).
        binary: The values are 0/1 (a success rate): unpaired differences use Newcombe's interval.
        strata: With `paired`, a label per pair (the environment): the difference is the macro average of the
            per-stratum differences, resampled within each stratum.
        seed: Bootstrap seed.

    Returns:
        {"delta", "ci": [lo, hi], "n_a", "n_b", "paired"}.
    """
    n_a, n_b = len(a), len(b)
    out: dict[str, float | int | bool | list[float]] = {"n_a": n_a, "n_b": n_b, "paired": paired}
    if not n_a or not n_b:
        out.update(delta=0.0, ci=[-1.0, 1.0])
        return out
    if paired:
        if n_a != n_b:
            raise ValueError(f"paired difference needs the same episodes on both sides, got {n_a} and {n_b}")
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        labels = list(strata) if strata is not None else [""] * n_a
        by: dict[str, list[float]] = {}
        for label, d in zip(labels, diffs, strict=True):
            by.setdefault(label, []).append(d)
        delta = sum(sum(g) / len(g) for g in by.values()) / len(by)
        lo, hi = stratified_bootstrap(list(by.values()), seed=seed, lo=-1.0, hi=1.0)
    else:
        delta = sum(b) / n_b - sum(a) / n_a
        if binary:
            lo, hi = newcombe(round(sum(a)), n_a, round(sum(b)), n_b)
        else:
            import numpy as np

            rng = np.random.default_rng(seed)
            xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
            ma = xa[rng.integers(0, n_a, size=(_RESAMPLES, n_a))].mean(axis=1)
            mb = xb[rng.integers(0, n_b, size=(_RESAMPLES, n_b))].mean(axis=1)
            samples = (mb - ma).tolist()
            lo, hi = _interval(samples, -1.0, 1.0)
    out.update(delta=delta, ci=[lo, hi])
    return out


def stratified_difference(
    groups_a: Sequence[Sequence[float]], groups_b: Sequence[Sequence[float]], seed: int = 0
) -> dict[str, float | int | bool | list[float]]:
    """Unpaired difference of two macro averages: per stratum mean(b) - mean(a), averaged over strata, with a
    bootstrap interval that resamples each side of each stratum on its own."""
    import numpy as np

    strata = [(list(x), list(y)) for x, y in zip(groups_a, groups_b, strict=True) if len(x) and len(y)]
    n_a = sum(len(x) for x, _ in strata)
    n_b = sum(len(y) for _, y in strata)
    if not strata:
        return {"delta": 0.0, "ci": [-1.0, 1.0], "n_a": n_a, "n_b": n_b, "paired": False}
    delta = sum(sum(y) / len(y) - sum(x) / len(x) for x, y in strata) / len(strata)
    rng = np.random.default_rng(seed)
    total = np.zeros(_RESAMPLES)
    for x, y in strata:
        xa, xb = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        total += xb[rng.integers(0, len(xb), size=(_RESAMPLES, len(xb)))].mean(axis=1)
        total -= xa[rng.integers(0, len(xa), size=(_RESAMPLES, len(xa)))].mean(axis=1)
    lo, hi = _interval((total / len(strata)).tolist(), -1.0, 1.0)
    return {"delta": delta, "ci": [lo, hi], "n_a": n_a, "n_b": n_b, "paired": False}
