"""Episodes an environment flags `solvable` (its expert reaches the goal within the step bound): summaries count them
and give the success rate over the solvable ones beside the plain rate; old eval runs resume with new fields' defaults.
"""

from __future__ import annotations

import json

import pytest

from refine.envs.base import EnvObservation, ToyEnv
from refine.errors import RunStoreError
from refine.eval import EvalConfig, evaluate, summarize
from refine.eval.reference_agents import ExpertAgent
from refine.eval.resume import resume_config


class FlaggedToy(ToyEnv):
    """The toy room, flagged unsolvable for odd seeds (and then the expert gives up at once)."""

    def reset(self, task=None, seed=None):
        first = super().reset(task, seed)
        self.solvable = (seed or 0) % 2 == 0
        info = {"solvable": self.solvable, "expert_steps": 3 if self.solvable else 31, "seed": seed}
        return EnvObservation(first.observation, first.instruction, first.available_actions, info)

    def expert_action(self):
        return super().expert_action() if self.solvable else None


def _record(env, success, solvable=None, progress=None):
    rec = {"env": env, "success": success, "progress": progress if progress is not None else float(success),
           "steps": 3, "invalid_steps": 0, "repeated_steps": 0, "prompt_tokens": 0, "completion_tokens": 0}  # fmt: skip
    if solvable is not None:
        rec["solvable"] = solvable
    return rec


class TestSummary:
    def test_counts_and_rates_over_solvable_episodes(self):
        recs = [_record("a", True, True), _record("a", False, True), _record("a", False, False),
                _record("a", False, False), _record("b", True)]  # fmt: skip
        s = summarize(recs)
        m = s["envs"]["a"]["base"]
        assert m["success_rate"] == 0.25 and m["n"] == 4
        sv = m["solvable"]
        assert (sv["n"], sv["unsolvable"], sv["unflagged"], sv["unsolvable_solved"]) == (2, 2, 0, 0)
        assert sv["success_rate"] == 0.5 and sv["success_ci"] == pytest.approx([0.0945, 0.9055], abs=1e-3)
        assert "solvable" not in s["envs"]["b"]["base"]  # b flags nothing: no solvable block
        assert any(w.startswith("a: 2 of 4 flagged episodes cannot be solved") for w in s["warnings"])
        # The macro average over environments that flag episodes; b's episode counts as unflagged.
        overall = s["overall"]["base"]["solvable"]
        assert overall["n"] == 2 and overall["unflagged"] == 1 and overall["success_rate"] == 0.5
        assert len(overall["success_ci"]) == 2

    def test_unsolvable_episode_solved_anyway_is_counted(self):
        sv = summarize([_record("a", True, False), _record("a", True, True)])["envs"]["a"]["base"]["solvable"]
        assert sv["unsolvable_solved"] == 1 and sv["n"] == 1 and sv["success_rate"] == 1.0


def test_eval_records_carry_the_flag_and_the_report_and_console_show_it(tmp_path, capsys):
    from refine.cli.cmd_eval import _print_solvable
    from refine.eval.report import build_report

    res = evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=4, workers=1), out=tmp_path / "run",
                   env_factory=lambda n, p: FlaggedToy())  # fmt: skip
    flags = sorted((r["seed"], r["solvable"], r["expert_steps"]) for r in res.records)
    assert flags == [(0, True, 3), (1, False, 31), (2, True, 3), (3, False, 31)]
    m = res.summary["envs"]["toy"]["base"]
    assert m["success_rate"] == 0.5 and m["solvable"]["success_rate"] == 1.0 and m["solvable"]["n"] == 2
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["envs"]["toy"]["base"]["solvable"]["unsolvable"] == 2
    _print_solvable(res.summary)
    out = capsys.readouterr().out
    assert "succ% solvable" in out and "2 of 4" in out and "100 [34-100]" in out
    page = build_report([tmp_path / "run"], tmp_path / "report")["html"].read_text()
    table = page.split('<table id="solvable-table">', 1)[1].split("</table>", 1)[0]
    assert "success % (solvable only)" in table and "<td>2 of 4</td>" in table


def test_report_without_flags_says_so(tmp_path):
    from refine.eval.report import build_report

    evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=1, workers=1), out=tmp_path / "run",
             env_factory=lambda n, p: ToyEnv())  # fmt: skip
    page = build_report([tmp_path / "run"], tmp_path / "report")["html"].read_text()
    assert 'id="solvable-none"' in page and 'id="solvable-table"' not in page


class TestResumeOldRun:
    def _old_run(self, tmp_path):
        out = tmp_path / "run"
        evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=2, workers=1), out=out,
                 env_factory=lambda n, p: ToyEnv())  # fmt: skip
        manifest = json.loads((out / "manifest.json").read_text())
        for key in ("suite", "annotations", "decoding"):  # as written before EvalConfig had these fields
            del manifest["config"][key]
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    def test_resumes_with_the_defaults_filled_in(self, tmp_path):
        out = self._old_run(tmp_path)
        (out / "episodes.jsonl").write_text((out / "episodes.jsonl").read_text().splitlines()[0] + "\n")
        res = evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=2, workers=1, decoding={"temperature": 0}),
                       out=out, resume=True, env_factory=lambda n, p: ToyEnv())  # fmt: skip
        assert len(res.records) == 2 and res.summary["suite"] == "refine"  # the missing episode was played
        assert res.summary["settings"]["decoding"] == {"temperature": 0}

    def test_a_changed_new_field_is_still_refused(self, tmp_path):
        out = self._old_run(tmp_path)
        with pytest.raises(RunStoreError, match=r"Cannot resume .*its config differs in \['suite'\]"):
            evaluate(ExpertAgent(), EvalConfig(envs=["toy"], episodes=2, workers=1, suite="agentboard"), out=out,
                     resume=True, env_factory=lambda n, p: ToyEnv())  # fmt: skip

    def test_resume_config_leaves_recorded_fields_alone(self):
        new = EvalConfig(envs=["toy"], suite="agentboard").model_dump()
        assert resume_config(new, None) == new
        assert resume_config(new, dict(new)) == new  # nothing missing: compared as is
        old = {k: v for k, v in new.items() if k != "decoding"}
        assert "decoding" not in resume_config(new, old) and resume_config(new, old)["suite"] == "agentboard"
