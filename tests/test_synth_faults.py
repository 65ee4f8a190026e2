"""Synthesis against a fake OpenAI-compatible server on loopback (issue #16): every item is a distinct sample, a
redone item gets its own answers back, transport failures are retried and left pending (never rejected), calls and
items have deadlines, keys given in code stay out of the run, and a changed persona file stops a resume."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import dspy
import pytest

from refine.errors import ConfigError, RunStoreError
from refine.personas import load_personas
from refine.synth import SynthConfig, run_synth
from tests.fault_server import FaultServer


def _records(run: Path) -> list[dict]:
    out = []
    for kind in ("accepted", "rejected"):
        p = run / f"{kind}.jsonl"
        if p.exists():
            out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def _personas(tmp_path: Path, *names: str) -> str:
    p = tmp_path / "personas.txt"
    p.write_text("\n".join(names) + "\n")
    return str(p)


def _lm(server: FaultServer, model: str | None = None, **kw) -> dspy.LM:
    kw.setdefault("num_retries", 0)
    kw.setdefault("timeout", 5)
    # A fresh model name per test: DSPy's cache ignores api_base, and answers must not come from another test.
    return dspy.LM(model or f"openai/fake-{uuid.uuid4().hex[:8]}", api_base=server.url, api_key="sk-local-test", **kw)


def _config(tmp_path: Path, lm: dspy.LM, **kw) -> SynthConfig:
    kw.setdefault("personas", _personas(tmp_path, "a baker", "a sailor"))
    kw.setdefault("workers", 4)
    return SynthConfig(lm=lm.model, **kw)


class TestDistinctSamples:
    def test_items_sharing_a_persona_get_distinct_answers_with_the_cache_on(self, tmp_path):
        with FaultServer(vary=True) as server:
            lm = _lm(server, cache=True)
            totals = run_synth(_config(tmp_path, lm, n=12), tmp_path / "run", lm=lm)
        records = _records(tmp_path / "run")
        assert totals["records"] == len(records) == 12
        # Two personas, twelve items: each item is its own sample, none is a cached copy of another.
        assert len({r["id"] for r in records}) == 12
        assert len({r["trajectory"]["script"]["environment"] for r in records}) == 12

    def test_a_redone_item_gets_its_own_answers_back_from_the_cache(self, tmp_path):
        with FaultServer(vary=True) as server:
            lm = _lm(server, cache=True)
            run_synth(_config(tmp_path, lm, n=6), tmp_path / "first", lm=lm)
            calls = server.calls
            run_synth(_config(tmp_path, lm, n=6), tmp_path / "again", lm=lm)
            assert server.calls == calls  # every request of the redo was answered by the cache
        ids = lambda run: sorted((r["key"], r["id"]) for r in _records(run))  # noqa: E731
        assert ids(tmp_path / "first") == ids(tmp_path / "again")

    def test_a_sampling_lm_gets_the_item_seed_in_the_request(self, tmp_path):
        with FaultServer() as server:
            lm = _lm(server, temperature=0.7)
            run_synth(_config(tmp_path, lm, n=3, seed=10, workers=1), tmp_path / "run", lm=lm)
            assert set(server.seeds) == {10, 11, 12}


class TestTransportFailures:
    def test_items_made_while_the_server_is_down_stay_pending_and_resume_retries_them(self, tmp_path):
        with FaultServer() as server:
            lm = _lm(server)
            cfg = _config(tmp_path, lm, n=4, max_attempts=1, retries=0)
            server.down = True
            totals = run_synth(cfg, tmp_path / "run", lm=lm)
            assert totals["records"] == 0 and totals["pending"] == 4 and totals["errors"] == 4
            manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
            assert manifest["status"] != "finished"
            errors = [json.loads(line) for line in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
            assert all("TransientLMError" in e["error"] and "--resume" in e["error"] for e in errors)
            # --keep-failed leaves them alone
            calls = server.calls
            server.down = False
            kept = run_synth(cfg.model_copy(update={"keep_failed": True}), tmp_path / "run", resume=True, lm=lm)
            assert kept["pending"] == 4 and server.calls == calls
            # the server is back: a plain resume retries every one of them
            totals = run_synth(cfg, tmp_path / "run", resume=True, lm=lm)
        assert totals["records"] == 4 and totals["pending"] == 0
        assert not any("server is down" in json.dumps(r) for r in _records(tmp_path / "run"))

    def test_a_transport_failure_is_redone_within_the_run_and_counted(self, tmp_path, monkeypatch):
        monkeypatch.setattr("refine.synthesis.item_work.RETRY_BACKOFF_S", 0.01)
        with FaultServer(fault_rate=0.3, faults=("500",), seed=3) as server:
            lm = _lm(server, cache=True)
            totals = run_synth(_config(tmp_path, lm, n=8, max_attempts=1, retries=6), tmp_path / "run", lm=lm)
            assert server.injected["500"] > 0
        records = _records(tmp_path / "run")
        assert totals["pending"] == 0 and len(records) == 8
        failed = sum(u.get("failed_calls", 0) for r in records for u in r["usage"].values())
        assert failed == server.injected["500"]  # every failed call is on record, in the usage of its item
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert totals["failed_calls"] == manifest["totals"]["failed_calls"] == failed  # ...and in the run's totals
        assert manifest["totals"]["per_model"][lm.model]["failed_calls"] == failed
        assert not any("injected server error" in (a.get("error") or "") for r in records for a in r["attempts"])

    def test_dspy_retries_of_rate_limits_are_counted(self, tmp_path):
        with FaultServer(fault_rate=0.3, faults=("429",), seed=5) as server:
            lm = _lm(server, num_retries=8)
            run_synth(_config(tmp_path, lm, n=6), tmp_path / "run", lm=lm)
            injected = server.injected["429"]
        records = _records(tmp_path / "run")
        retried = sum(u.get("retried_calls", 0) for r in records for u in r["usage"].values())
        assert injected > 0 and retried == injected
        totals = json.loads((tmp_path / "run" / "manifest.json").read_text())["totals"]
        assert totals["retried_calls"] == injected and totals["failed_calls"] == 0  # retried within the call


class TestDeadlines:
    def test_hangs_and_trickles_finish_within_the_deadline_and_resume_completes(self, tmp_path):
        with FaultServer(fault_rate=0.3, faults=("hang", "trickle"), seed=1, hang_s=60, trickle_s=0.2) as server:
            lm = _lm(server, timeout=1.0)
            cfg = _config(tmp_path, lm, n=8, max_attempts=2, retries=0, item_timeout=4.0, workers=8)
            t0 = time.perf_counter()
            totals = run_synth(cfg, tmp_path / "run", lm=lm)
            took = time.perf_counter() - t0
            assert server.injected["hang"] and server.injected["trickle"]
            assert took < 15, f"a hung or trickling server held the run for {took:.0f} s"
            assert totals["records"] + totals["pending"] == 8 and totals["pending"] > 0
            server.fault_rate = 0.0
            totals = run_synth(cfg, tmp_path / "run", resume=True, lm=lm)
        records = _records(tmp_path / "run")
        assert totals["pending"] == 0 and len(records) == 8 and len({r["key"] for r in records}) == 8

    def test_cli_settings_give_remote_lms_a_call_timeout_and_an_item_deadline(self, tmp_path, monkeypatch):
        with FaultServer(fault_rate=1.0, faults=("hang",), hang_s=60) as server:
            monkeypatch.setenv("OPENAI_API_BASE", server.url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
            cfg = SynthConfig(
                lm=f"openai/fake-{uuid.uuid4().hex[:8]}",
                personas=_personas(tmp_path, "a baker"),
                n=2,
                workers=2,
                timeout=0.5,
                item_timeout=2.0,
                retries=0,
            )
            t0 = time.perf_counter()
            totals = run_synth(cfg, tmp_path / "run")
            assert time.perf_counter() - t0 < 10
        assert totals["pending"] == 2 and totals["records"] == 0

    def test_default_timeouts_are_tens_of_seconds(self):
        from refine.lm import get_lm

        assert 10 <= SynthConfig().timeout <= 120
        # Every command building a remote LM through get_lm (eval, optimize, synth) gets a per-call timeout.
        assert 10 <= get_lm("openai/some-model").kwargs["timeout"] <= 120
        assert get_lm("openai/some-model", timeout=5).kwargs["timeout"] == 5


class TestKeysAndPersonas:
    # A key given in code and echoed by a server's 401: tests/test_auth_failures.py (a refused key stops the run).

    def test_resume_after_the_persona_file_changed_is_refused(self, tmp_path):
        with FaultServer() as server:
            lm = _lm(server)
            cfg = _config(tmp_path, lm, n=3)
            run_synth(cfg, tmp_path / "run", lm=lm)
            Path(cfg.personas).write_text("a baker\na pilot\n")
            with pytest.raises(RunStoreError, match=r"the personas \(.*personas\.txt\) changed since the run started"):
                run_synth(cfg, tmp_path / "run", resume=True, lm=lm)
        assert len(_records(tmp_path / "run")) == 3

    def test_persona_files_with_bad_encodings_are_one_line_errors(self, tmp_path):
        bad = tmp_path / "latin1.txt"
        bad.write_bytes("a caf\xe9 owner\n".encode("latin-1"))
        with pytest.raises(ConfigError, match=r"latin1\.txt is not UTF-8 text \(byte 5: invalid continuation"):
            load_personas(bad)
        lone = tmp_path / "lone.jsonl"
        lone.write_text('{"persona": "a baker"}\n{"persona": "bad \\ud800 escape"}\n')
        with pytest.raises(ConfigError, match=r"lone\.jsonl, line 2: the persona holds a lone surrogate"):
            load_personas(lone)


_POOL_PROBE = r"""
import json, sys
import refine.executor

def first_worker_sees(items, work, **kw):  # stands in for the pool: what its threads would find in sys.modules
    mod = sys.modules.get("litellm")
    print(json.dumps({"ready_at_pool": mod is not None and hasattr(mod, "completion")}), flush=True)
    raise SystemExit(0)

refine.executor.run_items = first_worker_sees
from refine.synth import SynthConfig, run_synth
mod = sys.modules.get("litellm")
print(json.dumps({"ready_at_start": mod is not None and hasattr(mod, "completion")}), flush=True)
run_synth(SynthConfig(n=1, lm="openai/fake-warmup", workers=8), sys.argv[1])
"""


def test_the_lm_client_is_imported_before_the_worker_pool_starts(tmp_path):
    """#16 item 5: 8 threads making a fresh process's first calls at once saw a half-imported `litellm` ("partially
    initialized module 'litellm' has no attribute 'completion'") and turned accepted items into rejections. The
    client is imported in the driver before the pool starts."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENAI_API_KEY": "sk-local-test", "OPENAI_API_BASE": "http://127.0.0.1:9/v1"}
    proc = subprocess.run(
        [sys.executable, "-c", _POOL_PROBE, str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # The premise: importing the project does not import litellm, so without the warm-up the pool would race on it.
    assert seen == [{"ready_at_start": False}, {"ready_at_pool": True}], proc.stdout
