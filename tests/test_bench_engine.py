"""The engine-vs-llama.cpp harness (benchmarks/bench_engine.py): agreement metric, summary, and a tiny CPU run of each
engine variant in fresh processes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_agreement_counts_tokens_before_the_first_difference():
    bench = _load()
    ref = {"a": [1, 2, 3, 4], "b": [5, 6], "c": [7, 8]}
    got = {"a": [1, 2, 9, 4], "b": [5, 6], "c": [7]}  # c stopped early: 1 of 2 matched
    expected = {"prompts": 3, "identical": 1, "prefix_agreement": round((0.5 + 1 + 0.5) / 3, 3)}
    assert bench.agreement(ref, got) == expected


def test_summary_takes_medians_and_keeps_errors():
    bench = _load()
    ids = {"p": [1, 2]}
    runs = [
        {"variant": "fp32", "decode_tps": 10.0, "prefill_tps": 100.0, "batch_tps": 50.0, "greedy_ids": ids},
        {"variant": "fp32", "decode_tps": 14.0, "prefill_tps": 120.0, "batch_tps": 70.0, "greedy_ids": ids},
        {"variant": "int4", "decode_tps": 20.0, "prefill_tps": 90.0, "batch_tps": 40.0, "greedy_ids": {"p": [1, 3]}},
        {"variant": "llamacpp", "error": "llama-cpp-python is not installed"},
    ]
    rows = {row["variant"]: row for row in bench.summarize(runs)}
    assert rows["fp32"]["decode_tps"] == 12.0 and rows["fp32"]["decode_tps_range"] == [10.0, 14.0]
    assert rows["int4"]["agreement"] == {"prompts": 1, "identical": 0, "prefix_agreement": 0.5}
    assert rows["llamacpp"] == {"variant": "llamacpp", "runs": 0, "error": "llama-cpp-python is not installed"}


def test_bad_variants_and_missing_gguf_fail_before_any_run(tmp_path):
    bench = _load()
    with pytest.raises(SystemExit, match=r"unknown variant.*int3"):
        bench.main(["--variants", "fp32,int3"])
    with pytest.raises(SystemExit, match="llamacpp needs --gguf FILE"):
        bench.main(["--model", f"local/{tmp_path}", "--variants", "llamacpp"])


def test_tiny_run_of_every_engine_variant_in_fresh_processes(tmp_path):
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    bench = _load()
    folder = make_tiny_chat_model(tmp_path / "model")
    out = tmp_path / "report.json"
    args = ["--model", f"local/{folder}", "--variants", "int4,fp32,int8", "--repeats", "1", "--new-tokens", "6"]
    args += ["--batch", "3", "--single-repeats", "1", "--agree-prompts", "2", "--agree-tokens", "5", "--out", str(out)]
    report = bench.main(args)
    assert json.loads(out.read_text())["summary"] == report["summary"]
    rows = {row["variant"]: row for row in report["summary"]}
    assert list(rows) == ["fp32", "int4", "int8"], "fp32 (the agreement reference) runs first"
    for row in rows.values():
        assert row["runs"] == 1 and row["batch_tps"] > 0 and row["prefill_tps"] > 0, row
    assert rows["fp32"]["agreement"] == {"prompts": 2, "identical": 2, "prefix_agreement": 1.0}
    assert rows["int4"]["agreement"]["prompts"] == 2
    run = next(r for r in report["runs"] if r["variant"] == "int8")
    assert run["batch_calls"] == 3 and max(run["batch_sizes"]) > 1, "the batched calls shared a generate()"


def test_kernel_timings_cover_every_mode_and_shape():
    bench = _load()
    rows = bench.kernels(threads=1, calls=1, warmup=0)
    assert [(r["weight"], r["rows"]) for r in rows] == [
        (w, m) for w in ("1536x576", "576x1536", "49152x576") for m in (1, 16)
    ]
    assert all(r[k] > 0 for r in rows for k in ("fp32", "int8", "int4", "int8dyn"))
