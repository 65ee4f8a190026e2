"""The P4 benchmark harness: variant names, the median/spread summary, and a tiny CPU run in fresh processes."""

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


def test_variant_names_parse_into_settings():
    bench = _load()
    v = bench.parse_variant("trl-tuned-liger-m16")
    assert (v["trainer"], v["tuned"], v["liger"], v["micro"], v["ckpt"]) == ("trl", True, True, 16, False)
    assert bench.parse_variant("refine")["micro"] == 8
    r = bench.parse_variant("refine-lora-ckpt-m4")
    assert r["lora"] and r["ckpt"] and r["micro"] == 4 and not r["liger"]
    with pytest.raises(SystemExit, match="unknown part 'fast'"):
        bench.parse_variant("refine-fast")
    with pytest.raises(SystemExit, match="start with trl or refine"):
        bench.parse_variant("unsloth-m8")
    with pytest.raises(SystemExit, match=r"trl-default\.\.\. or trl-tuned"):
        bench.parse_variant("trl-liger")


def _run(variant, tok_s, repeat, lens=((3, 5),), losses=(2.0, 1.5)):
    return {
        "variant": variant,
        "seqs_per_step": 4,
        "micro_batch": 2,
        "repeat": repeat,
        "real_tokens_per_s": tok_s,
        "mfu": tok_s / 1e6,
        "hardware_flops_utilization": tok_s / 1e6,
        "padding_fraction": 0.0,
        "peak_mem_gib": 1.0,
        "step_lengths": [list(x) for x in lens],
        "losses": list(losses),
    }


def test_summary_takes_median_and_spread_and_the_best_peer():
    bench = _load()
    runs = [
        _run("trl-default", 100.0, 0),
        _run("trl-default", 140.0, 1),
        _run("trl-tuned-m2", 200.0, 0),
        _run("trl-tuned-m2", 220.0, 1),
        _run("refine-m2", 600.0, 0, losses=(2.0, 1.5004)),
        _run("refine-m2", 400.0, 1),
        _run("refine-m2", 500.0, 2),
        {"variant": "refine-m4", "seqs_per_step": 4, "failed": True, "oom": True, "error": "CUDA out of memory"},
    ]
    by = {s["variant"]: s for s in bench.summarize(runs)}
    ours = by["refine-m2"]
    assert (ours["tok_s_median"], ours["tok_s_min"], ours["tok_s_max"], ours["repeats"]) == (500.0, 400.0, 600.0, 3)
    assert ours["best_trl_peer"] == "trl-tuned-m2"
    assert ours["speedup_vs_trl-default"] == pytest.approx(500 / 120, abs=1e-3)
    assert ours["speedup_vs_best_trl_peer"] == pytest.approx(500 / 210, abs=1e-3)
    assert ours["same_sequences_as_first"] and ours["max_step_loss_diff_vs_first"] == pytest.approx(4e-4)
    assert by["refine-m4"]["oom"] is True and "out of memory" in by["refine-m4"]["failed"]
    other = bench.summarize([_run("trl-default", 1.0, 0), _run("refine-m2", 2.0, 0, lens=((3, 6),))])
    assert other[1]["same_sequences_as_first"] is False and "max_step_loss_diff_vs_first" not in other[1]


@pytest.mark.slow
def test_tiny_cpu_run_in_fresh_processes_compares_same_sequences(tmp_path):
    bench = _load()
    out = tmp_path / "p4.json"
    argv = ["--shape", "tiny", "--cpu", "--rows", "24", "--batches", "4", "--steps", "2", "--warmup", "1"]
    report = bench.main([*argv, "--variants", "trl-default,refine-m2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == report["summary"]
    assert [r["variant"] for r in report["runs"]] == ["trl-default", "refine-m2"]
    assert all("error" not in r for r in report["runs"]), report["runs"]
    base, ours = report["summary"]
    assert ours["same_sequences_as_first"] is True
    assert ours["max_step_loss_diff_vs_first"] < 1e-3  # same data, same objective: the fast path trains the same thing
    assert ours["padding_fraction"] == 0 and base["padding_fraction"] > 0
    assert ours["speedup_vs_trl-default"] > 0
