"""The P4 benchmark script runs end to end on CPU at a tiny shape, so it cannot rot between GPU runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_p4_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_p4_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_rows_masks_about_half_in_spans():
    bench = _load()
    rows = bench.make_rows(50, (384, 2048), 49152, seed=3)
    lens = [len(r["input_ids"]) for r in rows]
    assert min(lens) >= 384 and max(lens) <= 2048
    masked = sum(lab == -100 for r in rows for lab in r["labels"]) / sum(lens)
    assert 0.4 < masked < 0.65
    assert all(r["labels"][0] == -100 for r in rows)  # trajectories open with masked system/user turns


@pytest.mark.slow
def test_tiny_cpu_run_compares_same_sequences(tmp_path):
    bench = _load()
    out = tmp_path / "p4.json"
    report = bench.main(
        [
            "--shape",
            "tiny",
            "--cpu",
            "--rows",
            "24",
            "--batches",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["comparisons"] == report["comparisons"]
    (cmp,) = report["comparisons"]
    assert cmp["same_sequences_per_step"] is True
    base, ours = cmp["final_loss_baseline_vs_ours"]
    assert abs(base - ours) < 1e-3  # same data, same objective: the fast path trains the same thing
    assert report["env"]["varlen_check"]["ok"]
    by = {r["variant"]: r for r in report["results"]}
    assert by["refine"]["padding_fraction"] == 0 and by["trl-default"]["padding_fraction"] > 0
