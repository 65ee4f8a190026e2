"""Ctrl-C and SIGTERM stop a run cleanly: exit 130/143, one line, manifest `interrupted`, and --resume completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refine import interrupt

ROOT = Path(__file__).resolve().parents[1]
FAKE = "py:tests.test_synth_support:make_lm"


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "200", **env}
    return subprocess.Popen(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the run ended before it could be interrupted (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run did not reach the point to interrupt in time")


def _records(run: Path) -> list[dict]:
    return _lines(run / "accepted.jsonl") + _lines(run / "rejected.jsonl")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_synth_cleanly_and_resume_completes_it(tmp_path, sig, code):
    run = tmp_path / "run"
    args = ["synth", "--lm", FAKE, "--n", "6", "--workers", "2", "--out", str(run), "-q"]
    proc = _start(args, tmp_path, REFINE_FAKE_LATENCY="0.3")
    _wait_for(lambda: len(_records(run)) >= 1, 120, proc)
    proc.send_signal(sig)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 30
    assert "Traceback" not in err and "terminate called" not in err
    assert err.strip().splitlines()[-1].startswith("Error: interrupted;"), err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    done_before = len(_records(run))
    assert 1 <= done_before < 6

    resumed = subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args, "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    records = _records(run)
    assert len(records) == 6 and len({r["key"] for r in records}) == 6  # nothing lost, nothing duplicated
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"


def test_interrupted_local_run_abandons_in_flight_items_and_marks_the_manifest(tmp_path):
    import threading

    from refine.executor import Emit, run_items
    from refine.store import RunStore

    started = threading.Event()

    def work(n: int) -> list[Emit]:
        if n == 0:
            time.sleep(0.05)
            return [Emit("results", f"n{n}", {"n": n})]
        started.set()
        give_up = time.monotonic() + 30  # never hang the suite: a swallowed signal fails the test instead
        while not interrupt.requested() and time.monotonic() < give_up:
            time.sleep(0.01)
        return [Emit("results", f"n{n}", {"n": n})]  # finished after the stop: must not be written

    def ctrl_c() -> None:
        started.wait(10)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes the main thread from its wait

    # Python's own SIGINT handler (raise KeyboardInterrupt), whatever an earlier test in this process left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt), RunStore(tmp_path / "run", config={"n": 4}) as store:
            run_items(range(4), work, store=store, key=lambda n: f"n{n}", workers=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "interrupted"
    keys = {r["key"] for r in _lines(tmp_path / "run" / "results.jsonl")}
    assert keys <= {"n0"}
    assert not _lines(tmp_path / "run" / "errors.jsonl")  # abandoned items are not failures
    assert not interrupt.requested()  # lowered again, so later LM calls in this process run normally


@pytest.mark.slow
def test_sigint_during_an_embedded_synth_exits_130_without_a_native_abort(tmp_path):
    run = tmp_path / "run"
    # A fresh seed per test run: the LM cache of an earlier run would answer at once, with nothing to interrupt.
    seed = str(int(time.time()) % 100_000)
    args = ["synth", "--n", "2", "--workers", "2", "--out", str(run), "--seed", seed, "-q"]
    proc = _start(args, tmp_path, DSPY_CACHEDIR=str(tmp_path / "dspy_cache"))
    _wait_for(lambda: (run / "manifest.json").exists(), 240, proc)
    time.sleep(8)  # the model loads and the first batch is generating
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    assert "terminate called" not in err, err[-2000:]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - sent < 60
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
