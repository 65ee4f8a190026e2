"""Synthesis runs (`refine.synth`, `refine synth`): items, records, manifest totals, resume, personas, CLI errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from refine.cli.app import app
from refine.errors import ConfigError, RunStoreError
from refine.personas import builtin_personas, load_personas
from refine.synth import SynthConfig, plan_items, resolve_lm, run_synth
from refine.testing import ScriptedLM
from tests.test_synth_support import make_lm, teacher_respond

FAKE = "py:tests.test_synth_support:make_lm"


def _records(run, kind):
    path = run / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class TestPlan:
    def test_items_are_stable_and_unique(self):
        a = plan_items(["x", "y", "z"], n=7, seed=3)
        assert a == plan_items(["x", "y", "z"], n=7, seed=3)
        assert len({it["key"] for it in a}) == 7
        assert [it["seed"] for it in a] == list(range(3, 10))
        assert plan_items(["x", "y", "z"], n=8, seed=3)[:7] == a  # growing n keeps the earlier items

    def test_no_personas(self):
        with pytest.raises(ConfigError, match="No personas"):
            plan_items([], 2)


class TestPersonas:
    def test_builtin_set(self):
        p = builtin_personas()
        assert len(p) >= 30 and len(set(p)) == len(p)

    def test_jsonl_csv_text(self, tmp_path):
        (tmp_path / "a.jsonl").write_text('{"persona": "a chef"}\n\n{"text": "a pilot"}\n{"id": 3, "bio": "a monk"}\n')
        assert load_personas(tmp_path / "a.jsonl") == ["a chef", "a pilot", "a monk"]
        (tmp_path / "b.csv").write_text("id,persona\n1,a smith\n2,a poet\n")
        assert load_personas(tmp_path / "b.csv") == ["a smith", "a poet"]
        (tmp_path / "c.csv").write_text("a clown,x\na diver,y\n")
        assert load_personas(tmp_path / "c.csv") == ["a clown", "a diver"]
        (tmp_path / "d.txt").write_text("a judge\n\na nurse\n")
        assert load_personas(str(tmp_path / "d.txt")) == ["a judge", "a nurse"]

    def test_errors(self, tmp_path):
        with pytest.raises(ConfigError, match="does not exist"):
            load_personas(tmp_path / "missing.jsonl")
        (tmp_path / "bad.jsonl").write_text("{nope\n")
        with pytest.raises(ConfigError, match=r"line 1: not valid JSON"):
            load_personas(tmp_path / "bad.jsonl")
        (tmp_path / "empty.txt").write_text("\n")
        with pytest.raises(ConfigError, match="holds no persona"):
            load_personas(tmp_path / "empty.txt")


class TestRunSynth:
    def test_records_verdicts_and_manifest_totals(self, tmp_path):
        run = tmp_path / "run"
        totals = run_synth(SynthConfig(n=12, lm=FAKE, workers=4), run)
        acc, rej = _records(run, "accepted"), _records(run, "rejected")
        assert len(acc) + len(rej) == 12 and acc and rej
        assert all(r["verdict"]["ok"] for r in acc) and not any(r["verdict"]["ok"] for r in rej)
        # the fake teacher never completes the task for its "bucket 2" scripts: 4 trajectory attempts, then rejected
        assert all([a["stage"] for a in r["attempts"]] == ["script"] + ["trajectory"] * 4 for r in rej)
        assert all(r["trajectory"]["provenance"]["usage"]["fake/teacher"]["calls"] == r["lm_calls"] for r in acc + rej)
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["program_hash"]
        assert {r["trajectory"]["provenance"]["program_hash"] for r in acc + rej} == {manifest["program_hash"]}
        t = manifest["totals"]
        assert t == totals
        assert (t["accepted"], t["rejected"], t["items_with_parse_failures"]) == (len(acc), len(rej), 0)
        assert t["lm_calls"] == sum(r["lm_calls"] for r in acc + rej)
        tokens = t["per_model"]["fake/teacher"]["prompt_tokens"] + t["per_model"]["fake/teacher"]["completion_tokens"]
        assert t["tokens"] == tokens > 0
        assert t["tokens_per_accepted"]["fake/teacher"] == round(tokens / len(acc), 1)

    def test_resume_adds_only_missing_items(self, tmp_path):
        run = tmp_path / "run"
        run_synth(SynthConfig(n=5, lm=FAKE), run)
        first = {r["key"] for k in ("accepted", "rejected") for r in _records(run, k)}
        with pytest.raises(RunStoreError, match="already holds a run"):
            run_synth(SynthConfig(n=5, lm=FAKE), run)
        with pytest.raises(RunStoreError, match=r"config differs in \['n'\]"):
            run_synth(SynthConfig(n=7, lm=FAKE), run, resume=True)
        lm = make_lm()
        run_synth(SynthConfig(n=5, lm=FAKE, workers=3, retries=0), run, resume=True, lm=lm)  # how hard, not what
        assert lm.calls == 0  # nothing left to do
        keys = [r["key"] for k in ("accepted", "rejected") for r in _records(run, k)]
        assert set(keys) == first and len(keys) == 5

    def test_program_crash_is_a_rejected_record(self, tmp_path):
        class Boom:
            def __call__(self, **kw):
                raise RuntimeError("kaboom")

            def named_predictors(self):
                return []

        run = tmp_path / "run"
        totals = run_synth(SynthConfig(n=2, lm=FAKE), run, program=Boom(), lm=ScriptedLM(teacher_respond))
        rej = _records(run, "rejected")
        assert totals["rejected"] == 2 and rej[0]["error"] == "RuntimeError: kaboom"
        assert rej[0]["verdict"]["reasons"] == ["RuntimeError: kaboom"] and rej[0]["verdict"]["stage"] == "parse"

    def test_resolve_lm_specs(self):
        assert resolve_lm(FAKE).model == "fake/teacher"
        with pytest.raises(ConfigError, match=r"must look like 'py:package\.module:factory'"):
            resolve_lm("py:nothing")
        with pytest.raises(ConfigError, match="Cannot import the LM factory"):
            resolve_lm("py:tests.no_such_module:make")


class TestCli:
    def test_synth_and_export(self, tmp_path):
        runner = CliRunner()
        run = tmp_path / "run"
        res = runner.invoke(app, ["synth", "--n", "4", "--lm", FAKE, "--out", str(run), "-q", "-w", "2"])
        assert res.exit_code == 0, res.output
        assert "accepted" in res.output and "tokens / accepted (fake/teacher)" in res.output
        res = runner.invoke(app, ["export", str(run), "--format", "messages", "--out", str(tmp_path / "m.jsonl")])
        assert res.exit_code == 0 and res.output.startswith("Exported ")

    def test_user_errors_are_one_red_line(self, tmp_path):
        import subprocess
        import sys

        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from refine.cli import main; main()",
                "synth",
                "--personas",
                "nope.jsonl",
                "--lm",
                FAKE,
                "--out",
                str(tmp_path / "r"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(tmp_path.parent),
            env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
        )
        assert out.returncode == 1
        assert "Error: Persona file nope.jsonl does not exist" in out.stderr
        assert "Traceback" not in out.stderr


def test_interactive_program_is_refused_with_a_fix(tmp_path):
    with pytest.raises(ConfigError, match="starts from a script or an environment"):
        run_synth(SynthConfig(n=1, lm=FAKE, program="interactive"), tmp_path / "r")


def test_remote_lms_get_a_chat_adapter_that_formats_each_signature_once():
    import dspy

    from refine.lm.adapter import throughput_adapter as _adapter_for
    from refine.signatures import GenerateScript, PlayTrajectory

    a = _adapter_for(ScriptedLM(teacher_respond))
    assert isinstance(a, dspy.ChatAdapter) and a.use_json_adapter_fallback
    for sig in (GenerateScript, PlayTrajectory, GenerateScript.with_instructions("other")):
        assert a.format_system_message(sig) == dspy.ChatAdapter().format_system_message(sig)
        assert a.format_field_structure(sig) is _adapter_for(ScriptedLM(teacher_respond)).format_field_structure(sig)
