"""Tests of refine.executor on a local Ray instance (2 CPUs): same results as local threads, and worker death
loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from refine.executor import Emit, WorkerLM, run_items
from refine.store import RunStore
from tests.test_executor import accepted_set, fake_lm, make_items, raw_keys, synth_like_work

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


KILL_DIR_ENV = "REFINE_TEST_KILL_DIR"


@pytest.fixture(scope="module", autouse=True)
def kill_dir(tmp_path_factory):
    """One local Ray instance for the module (starting one costs ~2-3 s); yields a folder its workers can see."""
    repo = str(Path(__file__).resolve().parents[1])
    # Workers import this test module by name (`tests.test_executor`), so they need the repository on their path.
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    folder = tmp_path_factory.mktemp("kill")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, KILL_DIR_ENV: str(folder)}},
    )
    yield folder
    ray.shutdown()


def _kill_self_once(marker: Path) -> None:
    """SIGKILL this worker process the first time it gets here (the marker file survives the kill)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class KillOnce:
    """A synthesis-like work function whose worker dies once at one item, before returning anything."""

    def __init__(self, victim: str, marker: Path) -> None:
        self.victim = victim
        self.marker = marker

    def __call__(self, item: dict[str, Any]) -> list[Emit]:
        if item["key"] == self.victim:
            _kill_self_once(self.marker)
        return synth_like_work(item)


class KillingRecord:
    """A record whose serialization kills the worker once: the crash lands between two records of one item."""

    def __init__(self, data: dict[str, Any], marker: Path) -> None:
        self.data = data
        self.marker = marker

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        _kill_self_once(self.marker)
        return self.data


class KillMidItem:
    """Emits three records per item; for the victim, the worker dies while writing the second one."""

    def __init__(self, victim: str, marker: Path) -> None:
        self.victim = victim
        self.marker = marker

    def __call__(self, item: dict[str, Any]) -> list[Emit]:
        k = item["key"]
        second: Any = {"part": 2}
        if k == self.victim:
            second = KillingRecord({"part": 2}, self.marker)
        # The item's own record comes first here: the executor must still write it last, or the item would look
        # done after the crash and its second part would never be written.
        return [Emit("accepted", k, {"ok": 1}), Emit("parts", f"{k}/1", {"part": 1}), Emit("parts", f"{k}/2", second)]


def _shards(run: Path) -> set[str]:
    return {p.name.split(".")[1] for p in run.glob("*.jsonl") if p.name.count(".") == 2}


def test_ray_gives_the_same_accepted_set_as_local(tmp_path):
    items = make_items(16)
    local = tmp_path / "local"
    run_items(items, synth_like_work, store=local, lm=WorkerLM("teacher", factory=fake_lm), workers=2)
    dist = tmp_path / "ray"
    lm = WorkerLM("teacher", factory="tests.test_executor:fake_lm")
    s = run_items(items, synth_like_work, store=dist, lm=lm, executor="ray", workers=2, chunk_size=3)
    assert (s.total, s.done, s.pending, s.lost) == (16, 16, 0, 0)
    assert accepted_set(dist) == accepted_set(local) and accepted_set(local)
    # The LM was built from its spec inside the Ray workers, and they wrote their own shard files.
    pids = {r["pid"] for r in RunStore.open_existing(dist).records("accepted")}
    assert os.getpid() not in pids
    assert _shards(dist) and not list(dist.glob("accepted.jsonl"))
    assert all(n == 1 for n in raw_keys(dist).values())


def test_killed_worker_loses_and_duplicates_nothing(tmp_path):
    items = make_items(12)
    marker = tmp_path / "killed"
    run = tmp_path / "ray"
    work = KillOnce(victim="p004", marker=marker)
    # p004 is the 2nd item of its chunk (p003-p005): p003 was finished by the attempt that died.
    s = run_items(
        items, work, store=run, lm=WorkerLM("teacher", factory=fake_lm), executor="ray", workers=2, chunk_size=3
    )
    assert marker.exists(), "the victim's worker was never killed"
    assert (s.total, s.pending, s.lost) == (12, 0, 0)
    assert s.done + s.skipped == 12 and s.skipped >= 1  # the retry found p003 already done
    local = tmp_path / "local"
    run_items(items, synth_like_work, store=local, lm=WorkerLM("teacher", factory=fake_lm))
    assert accepted_set(run) == accepted_set(local)
    assert all(n == 1 for n in raw_keys(run).values())
    assert len(_shards(run)) >= 2  # the dead worker's shard plus its replacement's


def test_worker_dying_between_records_of_one_item(tmp_path):
    marker = tmp_path / "killed"
    run = tmp_path / "ray"
    items = make_items(6)
    s = run_items(items, KillMidItem("p001", marker), store=run, executor="ray", workers=2, chunk_size=2)
    assert marker.exists()
    assert (s.pending, s.lost) == (0, 0)
    keys = raw_keys(run)
    assert all(n == 1 for n in keys.values()), keys
    expected = {f"p{i:03d}{suffix}" for i in range(6) for suffix in ("", "/1", "/2")}
    assert set(keys) == expected


def test_local_run_resumed_on_ray(tmp_path):
    items = make_items(10)
    run = tmp_path / "run"
    lm = WorkerLM("teacher", factory=fake_lm)
    with RunStore(run, config={"n": 10}) as store:
        run_items(items[:4], synth_like_work, store=store, lm=lm)
    with RunStore(run, config={"n": 10}, resume=True) as store:
        s = run_items(items, synth_like_work, store=store, lm=lm, executor="ray", workers=2, chunk_size=2)
    assert (s.skipped, s.done, s.pending) == (4, 6, 0)
    local = tmp_path / "local"
    run_items(items, synth_like_work, store=local, lm=lm)
    assert accepted_set(run) == accepted_set(local)
    assert all(n == 1 for n in raw_keys(run).values())


def test_task_lost_for_good_is_picked_up_on_resume(tmp_path):
    marker = tmp_path / "killed"
    run = tmp_path / "ray"
    items = make_items(8)
    with RunStore(run, config={"n": 8}) as store:
        s = run_items(
            items, KillOnce("p001", marker), store=store, lm=WorkerLM("teacher", factory=fake_lm), executor="ray",
            workers=2, chunk_size=4, max_retries=0,
        )  # fmt: skip
    assert s.lost == 4 and 1 <= s.pending <= 4  # p000 may have been finished before the kill
    with RunStore(run, config={"n": 8}, resume=True) as store:
        s2 = run_items(items, KillOnce("p001", marker), store=store, lm=WorkerLM("teacher", factory=fake_lm))
    assert (s2.pending, s2.done) == (0, s.pending)
    local = tmp_path / "local"
    run_items(items, synth_like_work, store=local, lm=WorkerLM("teacher", factory=fake_lm))
    assert accepted_set(run) == accepted_set(local)
    assert all(n == 1 for n in raw_keys(run).values())


def _store_broken(item: dict[str, Any]) -> list[Emit]:
    from refine.errors import RunStoreError

    raise RunStoreError("the run directory vanished")


def test_run_store_errors_in_a_worker_stop_the_run(tmp_path):
    from refine.errors import RunStoreError

    with pytest.raises(RunStoreError, match="the run directory vanished"):
        run_items(make_items(2), _store_broken, store=tmp_path / "r", executor="ray", workers=2)


# ---------------------------------------------------------------------------------------------------------- synthesis
def killing_teacher() -> Any:
    """The synthesis tests' fake teacher, except that the worker dies once when it writes the victim's script."""
    from refine.testing import ScriptedLM
    from tests.test_synth_support import teacher_respond

    def respond(fields: list[str], inputs: dict[str, Any], messages: Any) -> Any:
        folder = Path(os.environ.get(KILL_DIR_ENV, "/nonexistent"))  # set in Ray workers only
        victim = folder / "victim.txt"
        if "script" in fields and victim.exists() and inputs.get("persona") == victim.read_text():
            _kill_self_once(folder / "killed")
        return teacher_respond(fields, inputs, messages)

    return ScriptedLM(respond, model="fake/teacher")


def _synth_sets(run: Path) -> dict[str, tuple[str, bool]]:
    store = RunStore.open_existing(run)
    return {r["key"]: (r["id"], r["accepted"]) for k in ("accepted", "rejected") for r in store.records(k)}


def test_real_synthesis_through_ray_matches_local(tmp_path):
    from refine.synth import SynthConfig, run_synth

    cfg = SynthConfig(n=8, lm="py:tests.test_synth_support:make_lm", workers=2)
    local = run_synth(cfg, tmp_path / "local")
    snapshots: list[dict[str, int]] = []
    dist = run_synth(cfg, tmp_path / "ray", executor="ray", progress=lambda outcome, counts: snapshots.append(counts))
    assert _synth_sets(tmp_path / "ray") == _synth_sets(tmp_path / "local")
    assert snapshots[-1]["tokens"] == dist["tokens"] > 0  # the progress display counts tokens under Ray too
    assert dist["accepted"] == local["accepted"] > 0 and dist["rejected"] == local["rejected"] > 0
    assert dist["lm_calls"] == local["lm_calls"] and dist["pending"] == 0
    assert all(n == 1 for n in raw_keys(tmp_path / "ray").values())


def test_real_synthesis_survives_a_killed_worker(tmp_path, kill_dir):
    from refine.personas import load_personas
    from refine.synth import SynthConfig, plan_items, run_synth

    cfg = SynthConfig(n=8, lm="py:tests.test_ray_executor:killing_teacher", workers=2)
    items = plan_items(load_personas(cfg.personas), cfg.n, cfg.seed)
    (kill_dir / "killed").unlink(missing_ok=True)
    (kill_dir / "victim.txt").write_text(items[5]["persona"])
    try:
        totals = run_synth(cfg, tmp_path / "ray", executor="ray")
    finally:
        (kill_dir / "victim.txt").unlink()
    assert (kill_dir / "killed").exists(), "the victim's worker was never killed"
    assert totals["pending"] == 0 and totals["records"] == 8
    run_synth(cfg.model_copy(update={"lm": "py:tests.test_synth_support:make_lm"}), tmp_path / "local")
    assert _synth_sets(tmp_path / "ray") == _synth_sets(tmp_path / "local")
    assert all(n == 1 for n in raw_keys(tmp_path / "ray").values())


def test_refine_synth_cli_with_the_ray_executor(tmp_path):
    from typer.testing import CliRunner

    from refine.cli.app import app

    run = tmp_path / "run"
    args = ["synth", "--n", "4", "--lm", "py:tests.test_synth_support:make_lm", "--out", str(run), "-q", "-w", "2"]
    res = CliRunner().invoke(app, [*args, "--executor", "ray"])
    assert res.exit_code == 0, res.output
    keys = raw_keys(run)
    assert len(keys) == 4 and all(n == 1 for n in keys.values())
    assert _shards(run)  # written by Ray workers
    res = CliRunner().invoke(app, [*args, "--executor", "local", "--ray-address", "auto", "--resume"])
    assert res.exit_code != 0
    assert "ray_address (--ray-address) only applies with executor='ray'" in str(res.exception)


# ---------------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_through_ray_matches_local(tmp_path):
    from refine.eval import EvalConfig, evaluate
    from tests.test_eval import scripted_agent, toy_factory

    cfg = EvalConfig(envs=["toy"], episodes=3, workers=2, perturb=True, max_steps=10)
    local = evaluate(scripted_agent(), cfg, tmp_path / "local", env_factory=toy_factory)
    seen: list[dict[str, Any]] = []
    dist = evaluate(
        scripted_agent, cfg, tmp_path / "ray", env_factory=toy_factory, executor="ray", on_episode=seen.append
    )
    assert dist.summary["envs"] == local.summary["envs"] and dist.summary["overall"] == local.summary["overall"]
    assert dist.summary["run"]["executor"] == "ray"
    assert sorted(r["key"] for r in seen) == sorted(r["key"] for r in local.records)
    assert {r["key"]: r["success"] for r in seen} == {r["key"]: r["success"] for r in local.records}
    assert _shards(tmp_path / "ray") and all(n == 1 for n in raw_keys(tmp_path / "ray").values())


def test_refine_eval_cli_with_the_ray_executor(tmp_path):
    from typer.testing import CliRunner

    from refine.cli.app import app

    run = tmp_path / "run"
    args = ["eval", "--agent", "tests.test_eval:scripted_agent", "--envs", "toy", "-n", "3", "--out", str(run), "-q"]
    res = CliRunner().invoke(app, [*args, "--executor", "ray", "-w", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["executor"] == "ray" and summary["envs"]["toy"]["base"]["episodes"] == 3
    assert _shards(run) and all(n == 1 for n in raw_keys(run).values())
