"""`accelerate launch` readiness: the example configs parse, and two CPU processes (gloo DDP) train one student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
MSGS = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Task: open the door."},
    {"role": "assistant", "content": "Thought: kick.\nAction: kick door", "loss": False},
    {"role": "user", "content": "Observation: Invalid action."},
    {"role": "assistant", "content": "Thought: handle.\nAction: open door"},
]


@pytest.mark.parametrize(
    ("name", "kind", "procs"), [("fsdp", "FSDP", 8), ("deepspeed_zero3", "DEEPSPEED", 8), ("cpu_2proc", "MULTI_GPU", 2)]
)
def test_configs_are_valid_accelerate_configs(name, kind, procs):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(EXAMPLES / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.num_processes == procs
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_save_16bit_model"] is True
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.slow
def test_two_process_training_on_cpu(tmp_path):
    from refine.distill.tiny_bases import save_tiny_model

    base = save_tiny_model(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "messages": MSGS}) + "\n" for i in range(8)))
    out = tmp_path / "student"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "MASTER_PORT": "29517"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "cpu_2proc.yaml"),
        "--main_process_port", "29517", "-m", "refine.distill", str(data), "--out", str(out), "--base", str(base),
        "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(line.startswith("student ") for line in proc.stdout.splitlines()) == 1  # only rank 0 reports
    meta = json.loads((out / "refine_distill.json").read_text())
    epochs = [h["epoch"] for h in meta["log_history"] if "loss" in h]
    assert epochs == [0.5, 1.0, 1.5]  # 2 ranks x 2 rows per step over 8 rows: data is sharded across processes
    assert (out / "model.safetensors").is_file()
