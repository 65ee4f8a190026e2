"""Artifacts are data: planted payloads in a saved program folder or a GEPA checkpoint never run (issue #16)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from refine.errors import ConfigError
from refine.optimizers import load_optimized, optimize
from refine.programs.self_refine import build_graph
from refine.synth import SynthConfig, run_synth
from tests.test_optimize_support import arith_rows
from tests.test_optimize_support import make_lm as make_opt_lm
from tests.test_synth_support import make_lm


def user_graph():
    """A user's own program factory (module:attr), trusted only when passed for the run."""
    return build_graph()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved_program(tmp_path: Path, config: dict) -> Path:
    d = tmp_path / "saved"
    d.mkdir()
    build_graph().compile().save(str(d / "program.json"))
    (d / "report.json").write_text(json.dumps({"config": config}))
    return d


def _os_system_folder(tmp_path: Path, marker: Path) -> Path:
    return _saved_program(tmp_path, {"program": "os:system", "program_options": {"command": f"touch {marker}"}})


class TestSavedProgramFolder:
    def test_load_optimized_does_not_run_a_planted_program(self, tmp_path):
        marker = tmp_path / "PWNED"
        d = _os_system_folder(tmp_path, marker)
        with pytest.raises(ConfigError, match=r"names program 'os:system', which is not one of this project's"):
            load_optimized(d)
        assert not marker.exists()

    def test_refine_synth_program_dir_does_not_run_it(self, tmp_path):
        marker = tmp_path / "PWNED"
        d = _os_system_folder(tmp_path, marker)
        with pytest.raises(ConfigError, match="refine never imports code named by a file"):
            run_synth(SynthConfig(n=1, program=str(d), workers=1), tmp_path / "run", lm=make_lm())
        assert not marker.exists()

    def test_refine_optimize_dir_does_not_run_it(self, tmp_path):
        marker = tmp_path / "PWNED"
        d = _os_system_folder(tmp_path, marker)
        with pytest.raises(ConfigError, match="not one of this project's programs"):
            optimize(str(d), trainset=arith_rows(2), lm=make_opt_lm(), dry_run=True)
        assert not marker.exists()

    def test_a_planted_option_of_a_builtin_program_is_not_imported(self, tmp_path):
        marker = tmp_path / "PWNED"
        d = _saved_program(tmp_path, {"program": "self_refine", "program_options": {"stop_rule": "os:system"}})
        with pytest.raises(ConfigError, match="names stop_rule 'os:system'"):
            load_optimized(d)
        assert not marker.exists()

    def test_malformed_report_is_one_clear_error(self, tmp_path):
        d = _saved_program(tmp_path, {"program": ["os", "system"]})
        with pytest.raises(ConfigError, match=r"report\.json is malformed"):
            load_optimized(d)

    def test_a_user_program_loads_only_when_trusted_for_the_run(self, tmp_path):
        d = _saved_program(tmp_path, {"program": "tests.test_trust:user_graph", "program_options": {}})
        with pytest.raises(ConfigError, match="--trust-program module:attr"):
            load_optimized(d)
        assert load_optimized(d, trust=["tests.test_trust:user_graph"]).predictors()
        assert load_optimized(d, program="tests.test_trust:user_graph").predictors()

    def test_builtin_programs_still_load(self, tmp_path):
        d = _saved_program(tmp_path, {"program": "self_refine", "program_options": {"max_rounds": 2}})
        assert load_optimized(d).predictors()

    def test_pickled_program_needs_the_opt_in(self, tmp_path):
        d = _saved_program(tmp_path, {"program": None})
        (d / "program_pickle").mkdir()
        with pytest.raises(ConfigError, match="allow_pickle=True"):
            load_optimized(d)


class TestGepaCheckpoint:
    def _optimize(self, log: Path, **kw):
        return optimize(
            "self_refine",
            method="gepa",
            trainset=arith_rows(3),
            lm=make_opt_lm(),
            log_dir=log,
            optimizer_kwargs={"max_metric_calls": 30},
            **kw,
        )

    def test_a_planted_pickle_is_refused_before_any_call(self, tmp_path):
        marker = tmp_path / "PWNED"
        log = tmp_path / "gepa"
        log.mkdir()
        (log / "gepa_state.bin").write_bytes(pickle.dumps({"state": _Payload(marker)}))
        with pytest.raises(ConfigError, match=r"holds Python objects, not only data .*--unsafe-pickle-checkpoint"):
            self._optimize(log)
        assert not marker.exists()

    def test_the_opt_in_flag_names_the_risk_and_lets_it_load(self, tmp_path):
        from refine.optimizers.prompt_opt.config import OptimizeConfig

        assert "runs any code" in OptimizeConfig.model_fields["unsafe_pickle_checkpoint"].description
        marker = tmp_path / "PWNED"
        log = tmp_path / "gepa"
        log.mkdir()
        (log / "gepa_state.bin").write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(Exception):  # noqa: B017 - the payload ran (the user opted in); GEPA then fails on it
            self._optimize(log, unsafe_pickle_checkpoint=True)
        assert marker.exists()

    def test_a_truncated_checkpoint_is_one_clear_error(self, tmp_path):
        log = tmp_path / "gepa"
        log.mkdir()
        (log / "gepa_state.bin").write_bytes(pickle.dumps({"a": [1, 2, 3]})[:-3])
        with pytest.raises(ConfigError, match="is unreadable"):
            self._optimize(log)

    def test_gepa_own_checkpoint_is_data_and_resumes(self, tmp_path):
        log = tmp_path / "gepa"
        self._optimize(log)
        assert (log / "gepa_state.bin").is_file()
        assert self._optimize(log).status == "completed"


class TestCommandLine:
    """The same payloads through `refine` itself: one red line, exit 1, nothing run; the opt-in flags exist."""

    def _refine(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}
        cmd = [sys.executable, "-c", "from refine.cli import main; main()", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    def test_synth_program_dir_payload_is_one_line_and_trust_program_lets_a_user_program_in(self, tmp_path):
        marker = tmp_path / "PWNED"
        d = _os_system_folder(tmp_path, marker)
        lm = "py:tests.test_synth_support:make_lm"
        res = self._refine("synth", "-q", "--n", "1", "--lm", lm, "--program", str(d), "--out", str(tmp_path / "r"))
        assert res.returncode == 1 and "not one of this project's programs" in res.stderr
        assert "Traceback" not in res.stderr and not marker.exists()
        (d / "report.json").write_text(json.dumps({"config": {"program": "tests.test_trust:user_graph"}}))
        res = self._refine(
            *("synth", "-q", "--n", "1", "--lm", lm, "--program", str(d), "--out", str(tmp_path / "r2")),
            *("--trust-program", "tests.test_trust:user_graph", "--timeout", "30", "--item-timeout", "60"),
        )
        assert "not one of this project's programs" not in res.stderr

    def test_optimize_refuses_a_planted_checkpoint_and_offers_the_flag(self, tmp_path):
        marker = tmp_path / "PWNED"
        log = tmp_path / "gepa"
        log.mkdir()
        (log / "gepa_state.bin").write_bytes(pickle.dumps(_Payload(marker)))
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in arith_rows(3)))
        res = self._refine(
            *("optimize", "self_refine", "--method", "gepa", "--trainset", str(train)),
            *("--lm", "py:tests.test_optimize_support:make_lm", "--log-dir", str(log), "--out", str(tmp_path / "o")),
        )
        assert res.returncode == 1 and "--unsafe-pickle-checkpoint" in res.stderr and not marker.exists()
        assert "Traceback" not in res.stderr
