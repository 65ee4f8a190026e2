"""RefinementFinetune end to end (scripted AgentRefine teacher -> verified trajectories -> tiny student) and the
TRL `dspy.Provider` under DSPy's own BootstrapFinetune."""

from __future__ import annotations

import json

import dspy
import pytest

pytest.importorskip("trl")

from refine.distill.config import DistillConfig
from refine.distill.provider import TRLProvider, TRLTrainingJob, base_from_model_string
from refine.distill.tiny_bases import save_tiny_model
from refine.errors import ConfigError, TrainingError
from refine.optimizers.finetune import RefinementFinetune
from refine.programs import AgentRefinePipeline
from refine.signatures.player import PlayerAct
from refine.testing import ScriptedLM
from tests.test_synth_support import teacher_respond


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"))


def personas(n):
    return [dspy.Example(persona=f"persona {i}", seed=i).with_inputs("persona", "seed") for i in range(n)]


class TestRefinementFinetune:
    def test_end_to_end_with_scripted_teacher(self, base, tmp_path):
        out = tmp_path / "student"
        from refine.data import Verdict
        from refine.verify import verify_trajectory

        def verify(traj):  # the real verifier, plus one persona an auditor vetoed
            if traj.provenance.persona == "persona 3":
                return Verdict(ok=False, reasons=["vetoed persona"], checks=1)
            return verify_trajectory(traj)

        opt = RefinementFinetune(
            DistillConfig(out=out, base=str(base), max_steps=6, batch_size=2, learning_rate=5e-3),
            verify=verify,
            lm_kwargs={"max_tokens": 4, "cache": False},
        )
        trainset = personas(8)
        student = dspy.Predict(PlayerAct)
        with dspy.context(lm=ScriptedLM(teacher_respond)):
            tuned = opt.compile(student, trainset=trainset, teacher=AgentRefinePipeline())

        assert opt.stats["accepted"] == 7
        assert opt.stats["rejected"] == [{"index": 3, "reason": "vetoed persona"}]

        meta = json.loads((out / "refine_distill.json").read_text())
        assert meta["stats"]["examples"] == opt.stats["accepted"]
        assert 0.5 < meta["stats"]["masked_fraction"] < 1  # system/user + erroneous turns are masked
        assert opt.result.steps == 6 and opt.result.losses[-1] < opt.result.losses[0]
        card = (out / "README.md").read_text()
        assert "RefinementFinetune teacher run" in card and "teacher=" in card

        assert student.lm is None  # the original is untouched
        (pred,) = tuned.predictors()
        assert pred.lm.model == f"local/{out}"
        assert isinstance(pred.lm("Observation: a kitchen.")[0], str | dict)

    def test_rejections_recorded_and_too_few_fail(self, base, tmp_path):
        class NoTrajectory(dspy.Module):
            def forward(self, persona, seed):
                if seed == 1:
                    raise RuntimeError("teacher crashed")
                return dspy.Prediction(answer="x")

        opt = RefinementFinetune({"out": tmp_path / "s", "base": str(base)})
        with pytest.raises(TrainingError, match=r"only 0 of 2 teacher trajectories passed verification \(need 1\)"):
            opt.compile(dspy.Predict(PlayerAct), trainset=personas(2), teacher=NoTrajectory())
        assert [r["reason"] for r in opt.stats["rejected"]] == [
            "the teacher's prediction has no `trajectory`",
            "teacher failed: RuntimeError: teacher crashed",
        ]

    def test_bad_config_and_empty_trainset(self, tmp_path):
        with pytest.raises(ConfigError, match="RefinementFinetune config"):
            RefinementFinetune({"out": tmp_path, "ablation": "sometimes"})
        with pytest.raises(ConfigError, match="non-empty trainset"):
            RefinementFinetune({"out": tmp_path}).compile(dspy.Predict(PlayerAct), trainset=[], teacher=None)

    def test_lora_is_merged_so_the_student_loads(self, tmp_path):
        assert RefinementFinetune({"out": tmp_path, "lora": True}).config.merge_lora is True


class TestTRLProvider:
    def test_model_strings(self):
        assert base_from_model_string("embedded") is None
        assert base_from_model_string("local//tmp/x") == "/tmp/x"
        assert TRLProvider.is_provider_model("local/x") and not TRLProvider.is_provider_model("openai/gpt-4o")

    def test_bootstrap_finetune_trains_a_local_student(self, base, tmp_path):
        from refine.lm import get_lm

        student_lm = get_lm(f"local/{base}", provider=TRLProvider(out_root=tmp_path), max_tokens=4, cache=False)
        student = dspy.Predict("question -> answer")
        student.set_lm(student_lm)
        teacher = dspy.Predict("question -> answer")
        teacher.set_lm(ScriptedLM(lambda fields, inputs, messages: {"answer": inputs["question"].upper()}))
        trainset = [dspy.Example(question=f"q{i}", answer=f"Q{i}").with_inputs("question") for i in range(4)]
        ft = dspy.BootstrapFinetune(
            metric=lambda gold, pred, trace=None: gold.answer == pred.answer,
            train_kwargs={"max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-3},
            num_threads=1,
        ).compile(student, trainset=trainset, teacher=teacher)
        (pred,) = ft.predictors()
        assert pred.lm.model.startswith(f"local/{tmp_path}")
        out = pred.lm.model.removeprefix("local/")
        meta = json.loads((tmp_path / out.split("/")[-1] / "refine_distill.json").read_text())
        assert meta["stats"]["examples"] == 4 and meta["config"]["max_steps"] == 3
        assert meta["config"]["base"] == str(base)

    def test_job_status(self):
        job = TRLTrainingJob()
        assert job.status() == "running"
        job.set_result("local/x")
        assert job.status() == "succeeded"
