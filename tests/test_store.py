"""Tests of `refine.store.RunStore`: append/dedupe/resume, crash repair, config checks, locking, shards, secrets."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refine.data import Script, Trajectory
from refine.errors import RunStoreError
from refine.store import RunStore, redact, scrub_secrets

SECRET = "sk-test-0123456789abcdefSECRET"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestAppendAndResume:
    def test_append_dedupes_by_key_across_kinds(self, tmp_path):
        with RunStore(tmp_path / "run", config={"n": 1}) as store:
            assert store.append("accepted", {"x": 1}, key="a")
            assert not store.append("accepted", {"x": 2}, key="a")
            assert not store.append("rejected", {"x": 3}, key="a")
            assert store.append("rejected", {"x": 4}, key="b")
            assert store.has("a") and store.keys() == {"a", "b"}
        assert _lines(tmp_path / "run" / "accepted.jsonl") == [{"key": "a", "x": 1}]
        assert _lines(tmp_path / "run" / "rejected.jsonl") == [{"key": "b", "x": 4}]

    def test_resume_keeps_keys_and_appends(self, tmp_path):
        with RunStore(tmp_path / "run", config={"n": 1}, program_hash="h1") as store:
            store.append("accepted", {"x": 1}, key="a")
        with RunStore(tmp_path / "run", config={"n": 1}, resume=True, program_hash="h1") as store:
            assert store.has("a")
            assert not store.append("accepted", {"x": 1}, key="a")
            store.append("accepted", {"x": 2}, key="b")
            assert [r["key"] for r in store.records("accepted")] == ["a", "b"]
            assert store.manifest["status"] == "running" and store.manifest["resumed_at"]
            store.finish(accepted=2)
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["accepted"] == 2 and manifest["ended_at"]
        assert manifest["versions"]["dspy"]

    def test_existing_run_without_resume_is_refused(self, tmp_path):
        RunStore(tmp_path / "run", config={}).close()
        with pytest.raises(RunStoreError, match=r"already holds a run\. Pass --resume \(resume=True\) to continue it"):
            RunStore(tmp_path / "run", config={})

    def test_config_mismatch_on_resume(self, tmp_path):
        RunStore(tmp_path / "run", config={"model": "a", "n": 3}).close()
        with pytest.raises(
            RunStoreError,
            match=r"Cannot resume .*run: its config differs in \['model'\]\. Resume with the same settings, "
            r"or start a new run in another --out directory\.",
        ):
            RunStore(tmp_path / "run", config={"model": "b", "n": 3}, resume=True)
        # by default every key must match; which run-time knobs may change is the caller's list (next test)
        with pytest.raises(RunStoreError, match=r"its config differs in \['num_threads'\]"):
            RunStore(tmp_path / "run", config={"model": "a", "n": 3, "num_threads": 8}, resume=True)

    def test_the_caller_says_which_keys_a_resume_may_change(self, tmp_path):
        RunStore(tmp_path / "run", config={"model": "a", "workers": 2, "threads": 1}).close()
        ignores = ("threads",)
        RunStore(tmp_path / "run", config={"model": "a", "workers": 2, "threads": 8}, resume=True,
                 resume_ignores=ignores).close()  # fmt: skip
        with pytest.raises(RunStoreError, match=r"its config differs in \['workers'\]"):
            RunStore(tmp_path / "run", config={"model": "a", "workers": 4, "threads": 1}, resume=True,
                     resume_ignores=ignores)  # fmt: skip

    def test_an_eval_resume_may_change_workers_only(self, tmp_path):
        from refine.envs.base import ToyEnv
        from refine.eval import EvalConfig, evaluate
        from refine.eval.reference_agents import ExpertAgent

        def toy(name, perturb):
            return ToyEnv()

        evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=1, workers=1), out=tmp_path / "e", env_factory=toy)
        res = evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=1, workers=3), out=tmp_path / "e",
                       env_factory=toy, resume=True)  # fmt: skip
        assert res.summary["envs"]["toy"]["base"]["success_rate"] == 1.0
        with pytest.raises(RunStoreError, match=r"its config differs in \['max_steps'\]"):
            evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=1, max_steps=3), out=tmp_path / "e",
                     env_factory=toy, resume=True)  # fmt: skip

    def test_resume_with_non_json_config_types(self, tmp_path):
        # Regression: tuples / Paths were stored as JSON lists / strings, so every resume reported a mismatch.
        cfg = {"sizes": (1, 2), "out_dir": tmp_path / "x", "nested": {"t": ("a",)}}
        RunStore(tmp_path / "run", config=cfg).close()
        RunStore(tmp_path / "run", config=cfg, resume=True).close()

    def test_pydantic_config_and_records(self, tmp_path):
        script = Script(environment="e", tasks=["t"], actions=[])
        traj = Trajectory(script=script)
        with RunStore(tmp_path / "run", config=script) as store:
            store.append("accepted", traj, key=traj.id)
            (rec,) = store.records("accepted")
        assert Trajectory.model_validate({k: v for k, v in rec.items() if k != "key"}) == traj
        assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["environment"] == "e"

    def test_bad_config_type(self, tmp_path):
        with pytest.raises(RunStoreError, match=r"config must be a dict, a dataclass or a pydantic model, got int"):
            RunStore(tmp_path / "run", config=3)

    def test_program_change_on_resume(self, tmp_path):
        RunStore(tmp_path / "run", config={}, program_hash="h1").close()
        with pytest.raises(RunStoreError, match=r"the program changed \(hash h1 -> h2\)"):
            RunStore(tmp_path / "run", config={}, resume=True, program_hash="h2")

    def test_record_with_conflicting_key_field(self, tmp_path):
        # Regression: a record's own "key" field silently replaced the store key, breaking dedupe on resume.
        with RunStore(tmp_path / "run") as store:
            with pytest.raises(RunStoreError, match=r"has its own 'key' field 'other' that differs from key='k1'"):
                store.append("accepted", {"key": "other"}, key="k1")
            assert store.append("accepted", {"key": "k1", "v": 1}, key="k1")

    def test_bad_kind(self, tmp_path):
        with RunStore(tmp_path / "run") as store, pytest.raises(RunStoreError, match=r"must be an identifier"):
            store.append("../evil", {}, key="k")


class TestCrashSafety:
    def test_torn_last_line_is_repaired_on_reopen(self, tmp_path):
        with RunStore(tmp_path / "run", config={}) as store:
            store.append("accepted", {"x": 1}, key="a")
            store.append("accepted", {"x": 2}, key="b")
        path = tmp_path / "run" / "accepted.jsonl"
        with open(path, "ab") as f:
            f.write(b'{"key": "c", "x": 3, "tex')  # a process killed mid-write
        assert [r["key"] for r in RunStore.open_existing(tmp_path / "run").records("accepted")] == ["a", "b"]
        with RunStore(tmp_path / "run", config={}, resume=True) as store:
            assert not store.has("c")
            assert path.read_bytes().endswith(b"\n")
            store.append("accepted", {"x": 3}, key="c")
        assert [r["key"] for r in _lines(path)] == ["a", "b", "c"]

    def test_kill_9_while_appending_loses_and_duplicates_nothing(self, tmp_path):
        run = tmp_path / "run"
        worker = textwrap.dedent(
            f"""
            import sys
            from refine.store import RunStore
            store = RunStore({str(run)!r}, config={{"task": "kill"}}, resume=True)
            i = 0
            while True:
                key = f"k{{i:06d}}"
                if not store.has(key):
                    store.append("accepted" if i % 3 else "rejected", {{"i": i, "pad": "x" * (i % 4000)}}, key=key)
                i += 1
            """
        )
        rng = random.Random(0)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for _ in range(10):
            proc = subprocess.Popen([sys.executable, "-c", worker], env=env)
            deadline = time.monotonic() + 30
            while not (run / "accepted.jsonl").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.02, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with RunStore(run, config={"task": "kill"}, resume=True) as store:
            raw_keys = []
            for name in ("accepted.jsonl", "rejected.jsonl"):
                for line in (run / name).read_text().splitlines():
                    raw_keys.append(json.loads(line)["key"])  # every line parses after the repair
            assert len(raw_keys) == len(set(raw_keys)), "a record was written twice"
            n = len(raw_keys)
            assert n > 10
            assert sorted(raw_keys) == [f"k{i:06d}" for i in range(n)], "a record was lost"
            assert {r["i"] for r in store.records()} == set(range(n))


class TestLockAndShards:
    def test_lock_prevents_second_writer(self, tmp_path):
        first = RunStore(tmp_path / "run", config={})
        with pytest.raises(RunStoreError, match=r"is in use by another process; wait for it or pick another --out"):
            RunStore(tmp_path / "run", config={}, resume=True)
        first.close()
        RunStore(tmp_path / "run", config={}, resume=True).close()

    def test_shards_are_merged_on_read(self, tmp_path):
        main = RunStore(tmp_path / "run", config={"n": 1})
        s0 = RunStore(tmp_path / "run", shard="w0")
        s1 = RunStore(tmp_path / "run", shard="w1")
        s0.append("accepted", {"x": 0}, key="a")
        s1.append("accepted", {"x": 1}, key="b")
        s1.append("accepted", {"x": 9}, key="a")  # a race between workers: same key twice on disk
        s1.append("rejected", {"x": 2}, key="c")
        assert sorted(p.name for p in (tmp_path / "run").glob("*.jsonl")) == [
            "accepted.w0.jsonl",
            "accepted.w1.jsonl",
            "rejected.w1.jsonl",
        ]
        assert [(r["key"], r["x"]) for r in main.records("accepted")] == [("a", 0), ("b", 1)]
        assert main.count() == 3
        assert not main.has("a")
        main.refresh()
        assert main.keys() == {"a", "b", "c"}
        # refresh() reads only what was appended since the last read: its offsets sit at each file's end
        assert main._offsets == {p: p.stat().st_size for p in (tmp_path / "run").glob("*.jsonl")}
        s0.append("accepted", {"x": 3}, key="d")
        main.refresh()
        assert main.has("d") and main._offsets == {p: p.stat().st_size for p in (tmp_path / "run").glob("*.jsonl")}
        for s in (s0, s1, main):
            s.close()
        assert RunStore.open_existing(tmp_path / "run").keys() == {"a", "b", "c", "d"}

    def test_open_existing_needs_a_run_dir(self, tmp_path):
        with pytest.raises(RunStoreError, match=r"is not a run directory \(no manifest\.json\)"):
            RunStore.open_existing(tmp_path)

    def test_corrupt_manifest(self, tmp_path):
        RunStore(tmp_path / "run", config={}).close()
        (tmp_path / "run" / "manifest.json").write_text("{not json")
        with pytest.raises(RunStoreError, match=r"manifest\.json is unreadable .* the run directory is corrupt"):
            RunStore(tmp_path / "run", config={}, resume=True)


class TestSecrets:
    def test_no_file_in_the_run_dir_contains_a_secret(self, tmp_path, monkeypatch):
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        config = {
            "model": "openai/gpt-4o-mini",
            "api_key": SECRET,
            "lm": {"api_base": "http://localhost:8000/v1", "token": "another-token-value"},
            "headers": [{"Authorization": "Bearer xyz-12345678"}],
            "note": f"launched with key {SECRET}",
        }
        with RunStore(tmp_path / "run", config=config) as store:
            store.append("accepted", {"text": f"the LM echoed {SECRET}", "usage": {"prompt_tokens": 5}}, key="a")
            store.update_manifest(last_error=f"401 for key {SECRET}")
        files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
        assert len(files) >= 2
        for p in files:
            data = p.read_text()
            assert SECRET not in data, p
            assert "another-token-value" not in data and "xyz-12345678" not in data, p
        cfg = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
        assert cfg["api_key"] == "***" and cfg["lm"]["token"] == "***" and cfg["lm"]["api_base"].startswith("http")
        assert cfg["note"] == "launched with key ***"
        # the same secret config resumes (it is compared in its stored, redacted form)
        RunStore(tmp_path / "run", config=config, resume=True).close()
        assert next(RunStore.open_existing(tmp_path / "run").records())["usage"] == {"prompt_tokens": 5}

    def test_settings_that_merely_mention_tokens_are_kept(self, tmp_path, monkeypatch):
        # Regression: `max_tokens` matched the secret-key pattern and was stored as "***".
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-but-long-enough")
        cfg = {
            "max_tokens": 512,
            "lm": {"prompt_tokens": 3, "hf_token": "hf_abcdefgh"},
            "mode": "false-but-long-enough",
        }
        RunStore(tmp_path / "run", config=cfg).close()
        stored = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
        assert stored == {"max_tokens": 512, "lm": {"prompt_tokens": 3, "hf_token": "***"}, "mode": cfg["mode"]}

    def test_helpers(self, monkeypatch):
        monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdefgh")
        monkeypatch.setenv("SHORT_KEY", "abc")  # too short to scrub safely
        assert scrub_secrets("x tok-abcdefgh y abc") == "x *** y abc"
        assert redact({"api_key": "k", "password": "", "n": [{"secret": 1}], "OpenAI-API-Key": "k"}) == {
            "api_key": "***",
            "password": "",
            "n": [{"secret": "***"}],
            "OpenAI-API-Key": "***",
        }
        settings = {"max_tokens": 1, "tokens": 2, "keyword": "k", "secret_key": "s", "author": "a", "auth": "b"}
        assert redact(settings) == {
            "max_tokens": 1,
            "tokens": 2,
            "keyword": "k",
            "secret_key": "***",
            "author": "a",
            "auth": "***",
        }


class TestOnlyRunFilesAreTouched:
    """Issue #16 item 3: a folder is a run only if its manifest says so; no user file is read, cut or overwritten."""

    def test_non_empty_folder_without_manifest_is_refused(self, tmp_path):
        out = tmp_path / "mine"
        out.mkdir()
        (out / "personas.jsonl").write_text('{"persona": "a"}\n{"persona": "b"}')  # no final newline
        for resume in (False, True):
            with pytest.raises(RunStoreError, match=r"is not empty \(personas\.jsonl\) and holds no run"):
                RunStore(out, config={"n": 1}, resume=resume)
        assert (out / "personas.jsonl").read_text() == '{"persona": "a"}\n{"persona": "b"}'
        assert sorted(p.name for p in out.iterdir()) == ["personas.jsonl"]

    def test_a_killed_start_leaves_a_folder_that_can_still_be_used(self, tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        (out / ".lock").write_text("")
        with RunStore(out, config={"n": 1}) as store:
            assert store.append("accepted", {"x": 1}, "k")

    def test_out_at_a_file_or_unwritable_place_is_one_line(self, tmp_path):
        f = tmp_path / "file.txt"
        f.write_text("mine")
        with pytest.raises(RunStoreError, match=r"file\.txt is a file, not a folder"):
            RunStore(f)
        with pytest.raises(RunStoreError, match=r"Cannot create the run directory .*pick a writable --out"):
            RunStore(f / "sub")
        assert f.read_text() == "mine"

    def test_resume_repairs_and_reads_only_the_files_the_manifest_lists(self, tmp_path):
        run = tmp_path / "run"
        with RunStore(run, config={"n": 1}) as store:
            store.append("accepted", {"x": 1}, "a1")
        assert json.loads((run / "manifest.json").read_text())["files"] == ["accepted.jsonl"]
        # Files dropped into the run folder later: a torn last line, and a file named like a record kind.
        (run / "notes.jsonl").write_text('{"key": "n1"}\n{"key": "n2"')
        (run / "rejected.jsonl").write_text('{"key": "user-row", "mine": true}\n')
        (run / "accepted.jsonl").open("a").write('{"key": "a2", "x"')  # a torn line of the run's own file
        with RunStore(run, config={"n": 1}, resume=True) as store:
            assert store.keys() == {"a1"}
            assert [r["key"] for r in store.records()] == ["a1"]
        assert (run / "notes.jsonl").read_text() == '{"key": "n1"}\n{"key": "n2"'
        assert (run / "rejected.jsonl").read_text() == '{"key": "user-row", "mine": true}\n'
        assert (run / "accepted.jsonl").read_text().endswith("}\n")  # the run's own torn line was cut

    def test_read_only_open_reads_listed_files_only(self, tmp_path):
        run = tmp_path / "run"
        with RunStore(run) as store:
            store.append("accepted", {"x": 1}, "a1")
        (run / "data.jsonl").write_text('{"key": "d1"}\n')
        assert RunStore.open_existing(run).keys() == {"a1"}


class TestOddText:
    """Issue #16 item 6: writes never raise on odd text, and stored text is bounded."""

    def test_lone_surrogates_and_nuls_are_kept_as_valid_json(self, tmp_path):
        run = tmp_path / "run"
        with RunStore(run) as store:
            assert store.append("episodes", {"reply": "a\ud800b\x00c", "k\udfff": 1}, "e1")
            assert store.append("episodes", {"reply": "fine"}, "e2")
        rows = [json.loads(line) for line in (run / "episodes.jsonl").read_bytes().decode("utf-8").splitlines()]
        assert rows[0]["reply"] == "a\ufffdb\x00c" and rows[0]["k\ufffd"] == 1
        assert [r["key"] for r in rows] == ["e1", "e2"]

    def test_long_fields_are_cut_and_named(self, tmp_path):
        run = tmp_path / "run"
        with RunStore(run, max_field_chars=100) as store:
            store.append("accepted", {"t": {"turns": [{"text": "x" * 5000}]}, "short": "y"}, "a1")
        (rec,) = store.records("accepted")
        assert rec["truncated"] == ["t.turns[0].text"]
        assert (
            rec["t"]["turns"][0]["text"].startswith("x" * 100) and "cut 4900 characters" in rec["t"]["turns"][0]["text"]
        )
        assert rec["short"] == "y"

    def test_a_huge_record_keeps_its_key(self, tmp_path, monkeypatch):
        import refine.store as store_mod

        monkeypatch.setattr(store_mod, "_MAX_RECORD_BYTES", 1000)
        with RunStore(tmp_path / "run") as store:
            assert store.append("accepted", {"parts": ["z" * 50] * 100, "accepted": True}, "big")
        (rec,) = store.records("accepted")
        assert rec["key"] == "big" and rec["accepted"] is True and "dropped" in rec["error"]


class TestKeysGivenInCode:
    """Issue #16 item 10: a key passed in code or config is scrubbed like an environment key."""

    def test_a_config_key_is_scrubbed_from_records_and_manifest(self, tmp_path):
        key = "sk-given-in-code-0123456789"
        run = tmp_path / "run"
        with RunStore(run, config={"lm": {"api_key": key}}) as store:
            store.append("rejected", {"error": f"401 Unauthorized: bad key {key}"}, "r1")
        for p in run.iterdir():
            if p.is_file():
                assert key not in p.read_text(), p.name

    def test_register_secret(self, tmp_path):
        from refine.store import register_secret

        key = "registered-secret-value-42"
        register_secret(key)
        assert scrub_secrets(f"echo {key}!") == "echo ***!"
        with RunStore(tmp_path / "run") as store:
            store.append("errors", {"error": key}, "e1")
        assert key not in (tmp_path / "run" / "errors.jsonl").read_text()
