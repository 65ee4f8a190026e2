"""The engine's compute thread: models are loaded and run on one thread, whatever thread asks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from refine.lm.compute import compute_thread, run_on_compute_thread


def test_runs_on_the_compute_thread_and_hands_back_results_and_errors():
    assert run_on_compute_thread(lambda a, b=0: (threading.current_thread().name, a + b), 2, b=3) == (
        "refine-lm-compute",
        5,
    )
    with pytest.raises(ValueError, match="bad input"):
        run_on_compute_thread(lambda: (_ for _ in ()).throw(ValueError("bad input")))
    assert run_on_compute_thread(lambda: 1) == 1  # the thread survives an exception
    # A call made from the compute thread itself runs inline (no deadlock on the single thread).
    assert run_on_compute_thread(lambda: run_on_compute_thread(lambda: threading.current_thread().name)) == (
        "refine-lm-compute"
    )
    with ThreadPoolExecutor(4) as pool:
        names = set(pool.map(lambda _: run_on_compute_thread(lambda: threading.current_thread().ident), range(8)))
    assert names == {compute_thread().ident}


def test_engine_loads_and_runs_its_model_on_the_compute_thread(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from dspy.lm15 import Config, Message, Request

    from refine.lm import loader
    from refine.lm.engine import LocalEngine
    from refine.lm.tiny_chat_model import make_tiny_chat_model

    loads: list[str] = []
    real_load = loader._load
    monkeypatch.setattr(loader, "_load", lambda *a: loads.append(threading.current_thread().name) or real_load(*a))
    model = f"local/{make_tiny_chat_model(tmp_path / 'model')}"
    engine = LocalEngine(max_batch=4)
    try:
        request = Request(model=model, messages=(Message.user("hi"),), config=Config(max_tokens=3))
        loaded = loader.load_model(model)
        forwards: list[str] = []
        loaded.model.register_forward_pre_hook(lambda *_: forwards.append(threading.current_thread().name))
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(engine.complete, [request] * 3))
    finally:
        engine.close()
    assert loads == ["refine-lm-compute"]
    assert len(responses) == 3 and forwards and set(forwards) == {"refine-lm-compute"}


def test_ctrl_c_drains_the_compute_thread_through_the_hook_it_registers(monkeypatch):
    """refine.interrupt knows no LM code: the compute thread registers its wait with `on_drain` when imported."""
    from refine import interrupt
    from refine.lm import compute

    assert compute.wait_idle in interrupt._drains
    assert interrupt.drain(1.0) is True  # idle (or never started)
    busy: list[float] = []
    monkeypatch.setattr(interrupt, "_drains", [*interrupt._drains, lambda timeout: busy.append(timeout) or False])
    assert interrupt.drain(0.5) is False and busy == [0.5]
