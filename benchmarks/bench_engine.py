"""Embedded engine vs llama.cpp on CPU: one stream's decoding, 16 batched calls, and greedy agreement with float32.

Variants, each run in its own fresh process (repeats alternate the order; medians and ranges are reported):

* `fp32`: the in-process engine (`refine.lm.engine.LocalEngine`) with float32 weights (oneDNN linears);
* `int8`, `int4`: the same engine with weight-only quantized linears (`refine.lm.quantize`, the engine's `quantize`);
  `int8dyn`: int8 weights and activations through PyTorch's quantized engine (torch.ao dynamic quantization's op);
  `*-nodense` keep the quantized kernels for every batch size (no float32 oneDNN copy for many rows);
* `llamacpp`: llama-cpp-python on the model's GGUF file (the embedded model's own Q4_1 file), if it is installed.

Measured per variant:

* `decode_tps`: one call at a time, new tokens per second after the prompt (`(tokens - 1) / (t_call - t_prefill)`,
  `t_prefill` from the same call with `max_tokens=1`; prefix reuse off so each call starts cold); `prefill_tps`;
* `batch_tps`: `--batch` different prompts submitted at once, completion tokens of all over the wall time (llama.cpp's
  Python API has no batching across sequences, so its calls run one after another);
* `agreement`: greedy token ids of `--agree-tokens` tokens on a fixed prompt set, compared with the `fp32` variant
  position by position up to the first difference (`prefix_agreement`: the mean share of the reference's tokens
  matched before the first difference; `identical`: sequences equal throughout).

Run on a quiet machine (on a shared one, under the CPU lock):

    flock /tmp/refine-cpu.lock python benchmarks/bench_engine.py --variants fp32,int8,int4,llamacpp --repeats 2
    python benchmarks/bench_engine.py --model local/<tiny dir> --variants fp32,int4 --new-tokens 8   # the CPU test
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SYSTEM = "You are a helpful assistant. Answer clearly and completely."
PROMPTS = [
    "Write a long story about a robot who learns to paint, with three chapters.",
    "Explain in detail how photosynthesis works, step by step.",
    "List ten facts about the moon and explain each one.",
    "You are in a kitchen with a fridge 1, a sink 1 and a table 1. Describe how to put a cold apple on the table.",
    "Describe the history of the bicycle from its invention to today.",
    "Write a detailed recipe for bread, including every step and why it matters.",
    "Explain how a computer runs a program, from source code to the processor.",
    "Write a letter to a friend about a trip to the mountains.",
    "Compare cats and dogs as pets in a long essay.",
    "Explain the rules of chess to a beginner, piece by piece.",
    "Describe a day in the life of a medieval farmer.",
    "Write a poem about the sea, then explain its images.",
    "How do airplanes fly? Explain lift, thrust, drag and weight.",
    "Tell me about the water cycle and why it matters for life.",
    "Give advice for learning a new language, with examples.",
    "Write a short play with two characters who meet on a train.",
]
#: variant -> the engine's quantize mode (llamacpp: none, it is not the engine)
VARIANTS = {
    "fp32": "none",
    "int8": "int8",
    "int4": "int4",
    "int8dyn": "int8dyn",
    "int8-nodense": "int8",
    "int4-nodense": "int4",
    "int8dyn-nodense": "int8dyn",
    "llamacpp": None,
}


# ---------------------------------------------------------------------------------------------------------------------
# One variant, in its own process
# ---------------------------------------------------------------------------------------------------------------------
class _EngineRunner:
    """The refine engine: speed through `LocalEngine.complete`, token ids through the loaded model's generate()."""

    def __init__(self, model: str, variant: str, batch: int) -> None:
        if variant.endswith("-nodense"):
            os.environ["REFINE_QUANT_DENSE_ROWS"] = "0"
        from refine.lm.engine import LocalEngine
        from refine.lm.loader import load_model

        quantize = VARIANTS[variant]
        self.model = model
        self.engine = LocalEngine(max_batch=batch, batch_wait_ms=50, quantize=quantize)
        started = time.perf_counter()
        self.loaded = load_model(model, quantize=quantize)
        self.load_s = time.perf_counter() - started
        self.loaded.prefix_cache_entries = 0  # every call starts cold: same work for every variant

    def prompt_ids(self, prompt: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return list(
            self.loaded.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    def _request(self, prompt: str, max_tokens: int) -> Any:
        from dspy.lm15 import Config, Message, Request

        return Request(
            model=self.model,
            system=SYSTEM,
            messages=(Message.user(prompt),),
            config=Config(temperature=0.0, max_tokens=max_tokens),
        )

    def call(self, prompt: str, max_tokens: int) -> tuple[float, int]:
        started = time.perf_counter()
        response = self.engine.complete(self._request(prompt, max_tokens))
        return time.perf_counter() - started, int(response.usage.output_tokens)

    def batch(self, prompts: list[str], max_tokens: int) -> tuple[float, int, list[int]]:
        results: list[Any] = [None] * len(prompts)
        started = time.perf_counter()
        futures = [self.engine.submit(self._request(p, max_tokens)) for p in prompts]
        for i, future in enumerate(futures):
            results[i] = future.result()
        wall = time.perf_counter() - started
        sizes = [record.size for record in self.engine.batches][-len(prompts) :]
        return wall, sum(int(r.usage.output_tokens) for r in results), sizes

    def greedy_ids(self, ids: list[int], n: int) -> list[int]:
        import torch

        from refine.lm.compute import run_on_compute_thread

        def run() -> list[int]:
            with torch.inference_mode():
                out = self.loaded.model.generate(
                    input_ids=torch.tensor([ids]),
                    max_new_tokens=n,
                    do_sample=False,
                    pad_token_id=self.loaded.pad_id,
                    eos_token_id=list(self.loaded.eos_ids),
                )
            return out[0, len(ids) :].tolist()

        return _until_eos(run_on_compute_thread(run), self.loaded.eos_ids)


class _LlamaCppRunner:
    """llama-cpp-python on a GGUF file, prompts given as the same token ids (its own tokenizer is not used)."""

    def __init__(self, gguf: str, tokenizer_model: str, threads: int) -> None:
        from llama_cpp import Llama

        from refine.lm.loader import load_model

        self.tokenizer = load_model(tokenizer_model).tokenizer
        started = time.perf_counter()
        self.llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.load_s = time.perf_counter() - started
        self.eos = {self.llm.token_eos()}

    def prompt_ids(self, prompt: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def call(self, prompt: str, max_tokens: int) -> tuple[float, int]:
        ids = self.prompt_ids(prompt)
        self.llm.reset()  # no reuse of the previous prompt's KV cache: every call starts cold
        started = time.perf_counter()
        out = self.llm.create_completion(ids, max_tokens=max_tokens, temperature=0.0, top_k=1)
        return time.perf_counter() - started, int(out["usage"]["completion_tokens"])

    def batch(self, prompts: list[str], max_tokens: int) -> tuple[float, int, list[int]]:
        started = time.perf_counter()
        tokens = sum(self.call(p, max_tokens)[1] for p in prompts)
        return time.perf_counter() - started, tokens, [1] * len(prompts)

    def greedy_ids(self, ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(int(token))
            if token in self.eos or len(out) >= n:
                break
        return _until_eos(out, self.eos)


def _until_eos(tokens: list[int], eos: Any) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[:index]
    return tokens


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_variant(variant: str, a: argparse.Namespace) -> dict[str, Any]:
    """Measure one variant in this process."""
    os.environ["REFINE_PREFIX_CACHE"] = "0"
    if variant == "llamacpp":
        runner: Any = _LlamaCppRunner(a.gguf, a.model, a.threads)
    else:
        runner = _EngineRunner(a.model, variant, a.batch)
    long_prompt = PROMPTS[0]
    runner.call(long_prompt, 4)  # warm-up
    prefill, decode = [], []
    tokens = 0
    for _ in range(a.single_repeats):
        t1, _ = runner.call(long_prompt, 1)
        tn, tokens = runner.call(long_prompt, a.new_tokens)
        prefill.append(t1)
        if tokens > 1 and tn > t1:
            decode.append((tokens - 1) / (tn - t1))
    n_prompt = len(runner.prompt_ids(long_prompt))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.batch)]
    runner.batch(prompts[:2], 2)  # warm-up of the batched path
    wall, batch_tokens, sizes = runner.batch(prompts, a.new_tokens)
    agree = {p: runner.greedy_ids(runner.prompt_ids(p), a.agree_tokens) for p in PROMPTS[: a.agree_prompts]}
    import torch

    return {
        "variant": variant,
        "load_s": round(runner.load_s, 2),
        "prompt_tokens": n_prompt,
        "decode_tokens": tokens,
        "decode_tps": round(_median(decode), 1) if decode else None,
        "decode_tps_all": [round(x, 1) for x in decode],
        "prefill_tps": round(n_prompt / _median(prefill), 1),
        "batch_calls": a.batch,
        "batch_tokens": batch_tokens,
        "batch_wall_s": round(wall, 2),
        "batch_tps": round(batch_tokens / wall, 1),
        "batch_sizes": sizes,
        "greedy_ids": agree,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The parent: fresh process per run, alternating order, summary
# ---------------------------------------------------------------------------------------------------------------------
def agreement(reference: dict[str, list[int]], other: dict[str, list[int]]) -> dict[str, Any]:
    """Position-by-position agreement of greedy token ids with the reference, up to the first difference.

    Example:
        >>> agreement({"a": [1, 2, 3, 4], "b": [5, 6]}, {"a": [1, 2, 9, 9], "b": [5, 6]})
        {'prompts': 2, 'identical': 1, 'prefix_agreement': 0.75}
    """
    shares, identical = [], 0
    for prompt, ref in reference.items():
        got = other.get(prompt, [])
        same = next((i for i, (x, y) in enumerate(zip(ref, got, strict=False)) if x != y), min(len(ref), len(got)))
        identical += ref == got
        shares.append(same / len(ref) if ref else float(not got))
    return {"prompts": len(shares), "identical": identical, "prefix_agreement": round(sum(shares) / len(shares), 3)}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range per variant; agreement against the first `fp32` run."""
    reference = next((r["greedy_ids"] for r in runs if r.get("variant") == "fp32" and "greedy_ids" in r), None)
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        ok = [r for r in runs if r["variant"] == variant and "error" not in r]
        row: dict[str, Any] = {"variant": variant, "runs": len(ok)}
        if not ok:
            row["error"] = next(r["error"] for r in runs if r["variant"] == variant)
            rows.append(row)
            continue
        for key in ("decode_tps", "prefill_tps", "batch_tps"):
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                row[key] = round(_median(values), 1)
                row[key + "_range"] = [min(values), max(values)]
        if reference is not None:
            row["agreement"] = agreement(reference, ok[0]["greedy_ids"])
        rows.append(row)
    return rows


def kernels(threads: int, calls: int | None = None, warmup: int = 5) -> list[dict[str, Any]]:
    """Microseconds per call of one linear layer in each engine mode, SmolLM2-135M's shapes, 1 and 16 rows."""
    import torch

    from refine.lm.quantize import DynamicInt8Linear, Int4Linear, Int8Linear

    torch.set_num_threads(threads)

    def timed(fn: Any, x: Any, n: int) -> float:
        for _ in range(warmup):
            fn(x)
        started = time.perf_counter()
        for _ in range(n):
            fn(x)
        return round((time.perf_counter() - started) / n * 1e6)

    rows = []
    with torch.inference_mode():
        for out_features, in_features in ((1536, 576), (576, 1536), (49152, 576)):
            linear = torch.nn.Linear(in_features, out_features, bias=False)
            layers = {"int8": Int8Linear(linear), "int4": Int4Linear(linear), "int8dyn": DynamicInt8Linear(linear)}
            n = calls or (30 if out_features > 40000 else 150)
            for m in (1, 16):
                x = torch.randn(m, in_features)
                row: dict[str, Any] = {"weight": f"{out_features}x{in_features}", "rows": m}
                row["fp32"] = timed(functools.partial(torch.nn.functional.linear, weight=linear.weight), x, n)
                for name, layer in layers.items():
                    row[name] = timed(layer._mm, x, n)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _default_gguf(model: str) -> str | None:
    if model != "embedded":
        return None
    from refine.lm.embedded import embedded_gguf_path

    return str(embedded_gguf_path())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="engine model string (default: the embedded SmolLM2-135M)")
    p.add_argument("--gguf", default=None, help="GGUF file for llamacpp (default: the embedded model's own)")
    p.add_argument("--variants", default="fp32,int8,int4,llamacpp")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant; odd repeats go in reverse order")
    p.add_argument("--new-tokens", type=int, default=128, help="max new tokens per call")
    p.add_argument("--single-repeats", type=int, default=3, help="single-stream measurements per run")
    p.add_argument("--batch", type=int, default=16, help="calls submitted at once")
    p.add_argument("--agree-prompts", type=int, default=8)
    p.add_argument("--agree-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="llama.cpp threads")
    p.add_argument("--run-timeout", type=float, default=600)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--kernels", action="store_true", help="time one linear per mode instead (microseconds per call)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.gguf = a.gguf or _default_gguf(a.model)
    if a.worker:
        Path(a.result).write_text(json.dumps(run_variant(a.worker, a)))
        return {}
    if a.kernels:
        return {"kernels": kernels(a.threads)}
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if "llamacpp" in variants and not a.gguf:
        raise SystemExit("llamacpp needs --gguf FILE for a model other than the embedded one")
    if "fp32" in variants:  # the agreement reference runs first
        variants.remove("fp32")
        variants.insert(0, "fp32")
    runs: list[dict[str, Any]] = []
    for repeat in range(a.repeats):
        order = variants if repeat % 2 == 0 else [variants[0], *reversed(variants[1:])]
        for variant in order:
            if variant == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
                runs.append({"variant": variant, "error": "llama-cpp-python is not installed"})
                continue
            with tempfile.NamedTemporaryFile(suffix=".json") as result:
                cmd = [sys.executable, __file__, "--worker", variant, "--result", result.name, *_passthrough(a)]
                started = time.perf_counter()
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=a.run_timeout)
                except subprocess.TimeoutExpired:
                    runs.append({"variant": variant, "error": f"timed out after {a.run_timeout:.0f} s"})
                    continue
                if done.returncode != 0:
                    runs.append({"variant": variant, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]})
                    continue
                run = json.loads(Path(result.name).read_text())
                run["repeat"], run["process_s"] = repeat, round(time.perf_counter() - started, 1)
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "greedy_ids"}), flush=True)
            report = _report(a, runs)  # after every run: a cut-short benchmark keeps what it measured
    report = _report(a, runs)
    for row in report["summary"]:
        print(json.dumps(row), flush=True)
    return report


def _report(a: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(a).items() if k not in ("worker", "result")},
        "summary": summarize(runs),
        "runs": runs,
    }
    try:
        import torch

        report["machine"]["torch"] = torch.__version__
        import llama_cpp

        report["machine"]["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return report


def _passthrough(a: argparse.Namespace) -> list[str]:
    args = ["--model", a.model, "--new-tokens", str(a.new_tokens), "--single-repeats", str(a.single_repeats)]
    args += ["--batch", str(a.batch), "--agree-prompts", str(a.agree_prompts), "--agree-tokens", str(a.agree_tokens)]
    args += ["--threads", str(a.threads)]
    return args + (["--gguf", a.gguf] if a.gguf else [])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    threading.current_thread().name = "bench-engine"
    main()
