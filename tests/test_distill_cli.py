"""`refine distill`: mask preview, a short training run with a tiny base, and one-line user errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("trl")

from refine.cli.app import app
from refine.distill.tiny_bases import save_tiny_model
from refine.errors import ConfigError

MSGS = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Task: open the door."},
    {"role": "assistant", "content": "Thought: kick it.\nAction: kick door", "loss": False},
    {"role": "user", "content": "Observation: Invalid action."},
    {"role": "assistant", "content": "Thought: use the handle.\nAction: open door"},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("base"))


@pytest.fixture()
def data(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "messages": MSGS}) + "\n" for i in range(6)))
    return p


def test_show_masks_highlights_trained_tokens(base, data):
    res = CliRunner().invoke(
        app, ["distill", str(data), "--base", str(base), "--show-masks", "1"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "r0:" in res.output and "trained" in res.output
    assert "r1:" not in res.output  # only N examples
    assert "Action: open door<|im_end|>" in res.output


def test_show_masks_no_refine_drops_error_turn(base, data):
    res = CliRunner().invoke(
        app, ["distill", str(data), "--base", str(base), "--show-masks", "1", "--ablation", "no-refine"]
    )
    assert res.exit_code == 0, res.output
    assert "kick door" not in res.output and "open door" in res.output


def test_train_writes_student(base, data, tmp_path):
    out = tmp_path / "student"
    res = CliRunner().invoke(
        app,
        [
            "distill",
            str(data),
            "--base",
            str(base),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "student" in res.output and "local/" in res.output
    assert (out / "config.json").is_file() and (out / "loss_curve.png").is_file()
    meta = json.loads((out / "refine_distill.json").read_text())
    assert meta["config"]["max_steps"] == 3 and meta["stats"]["examples"] == 6


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--ablation", "none", "--out", "x"], "--ablation 'none' is not one of masked, trained, no-refine"),
        (["--padding-free", "maybe", "--out", "x"], "--padding-free 'maybe'"),
        ([], "--out is required"),
        (["--out", "x", "--merge"], "--merge only applies to --lora"),
    ],
)
def test_user_errors(data, args, match):
    res = CliRunner().invoke(app, ["distill", str(data), *args])
    assert isinstance(res.exception, ConfigError)
    assert match in str(res.exception)


def test_missing_data_is_one_red_line(tmp_path):
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from refine.cli import main; main()",
            "distill",
            str(tmp_path / "nope.jsonl"),
            "--show-masks",
            "1",
            "--base",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: training data {tmp_path / 'nope.jsonl'} does not exist; pass a run directory or an exported dataset"
    ]


# ------------------------------------------------------------------------- exports -> distill, and TRL itself
from pathlib import Path  # noqa: E402

from refine.export import FORMATS, export_run  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "published"
_OUT_NAMES = {"messages": "m.jsonl", "sharegpt": "s.json", "agentgym": "g.json", "agentrefine": "ar.json"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from refine.data import RunRecord
    from refine.store import RunStore
    from tests.test_export import _traj

    path = tmp_path_factory.mktemp("run") / "run"
    with RunStore(path, config={"n": 2}) as store:
        for i in range(2):
            t = _traj(f"persona {i}", i)
            store.append("accepted", RunRecord(key=f"k{i}", accepted=True, trajectory=t).to_json(), key=f"k{i}")
        store.finish(totals={"accepted": 2, "rejected": 0})
    return path


def _distill(source, base, out):
    return CliRunner().invoke(
        app, ["distill", str(source), "--base", str(base), "--out", str(out), "--max-steps", "1", "--batch-size", "2"]
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_distills_with_its_masks(run_dir, base, tmp_path, fmt):
    """run dir -> export -> `refine distill` (1 step): the trained-token count equals the run's own."""
    from transformers import AutoTokenizer

    from refine.distill.labels import IGNORE_INDEX, build_labels
    from refine.distill.training_rows import load_rows

    out = tmp_path / _OUT_NAMES.get(fmt, fmt)
    export_run(run_dir, fmt, out)
    tok = AutoTokenizer.from_pretrained(base)

    def trained(rows):
        return [sum(lab != IGNORE_INDEX for lab in build_labels(tok, r["messages"])["labels"]) for r in rows]

    source = out  # a file or a folder (trl, llamafactory, hf): each is a source of `refine distill`
    # the same trained tokens as the run itself (agentgym folds the system text into the first user turn: context)
    assert trained(load_rows(source)) == trained(load_rows(run_dir))
    res = _distill(source, base, tmp_path / "student")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "student" / "refine_distill.json").read_text())
    assert meta["stats"]["examples"] == 2
    assert meta["stats"]["trained_tokens"] == sum(trained(load_rows(source)))


def test_hf_export_distills_without_the_provenance_models_list_crash(run_dir, base, tmp_path):
    """Regression (#15): `provenance.models` is a list of records in the hf export; `refine distill` called
    `.items()` on it after training and crashed before the model card. It must train, and the card name the models."""
    export_run(run_dir, "hf", tmp_path / "hf")
    res = _distill(tmp_path / "hf", base, tmp_path / "student")
    assert res.exit_code == 0, res.output
    card = (tmp_path / "student" / "README.md").read_text()
    assert '"teacher=fake/t": 2' in card


@pytest.mark.parametrize("name", ["agentrefine.json", "agentgym.json", "agentinstruct.json", "agentflan.jsonl"])
def test_distill_a_published_set_in_one_command(base, tmp_path, name):
    res = _distill(FIXTURES / name, base, tmp_path / "student")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "student" / "refine_distill.json").read_text())
    assert meta["stats"]["examples"] >= 1 and meta["stats"]["trained_tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["smollm2", "llama3"])
def test_trl_sfttrainer_trains_exactly_the_build_labels_tokens(run_dir, tmp_path, family):
    """The trl export with TRL's own SFTTrainer(assistant_only_loss=True, chat_template_path=...): the labels TRL
    trains on, token by token, are build_labels' trained tokens; one optimizer step runs."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from refine.distill.labels import build_labels
    from refine.distill.tiny_bases import make_tiny_model, make_tiny_tokenizer

    if family == "smollm2":
        from transformers import AutoTokenizer

        from refine.lm.embedded import embedded_model_dir

        tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    else:
        tok = make_tiny_tokenizer(family)
    original = tok.chat_template
    out = tmp_path / "trl"
    export_run(run_dir, "trl", out, template=family)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    ours = {tuple(e["input_ids"]): e["labels"] for e in (build_labels(tok, r["messages"]) for r in rows)}
    args = SFTConfig(
        output_dir=str(tmp_path / "o"),
        max_steps=1,
        per_device_train_batch_size=1,
        assistant_only_loss=True,
        chat_template_path=str(out / "chat_template.jinja"),
        max_length=None,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
    )
    ds = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    trainer = SFTTrainer(model=make_tiny_model(tok), args=args, train_dataset=ds, processing_class=tok)
    seen = 0
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"][0].tolist()
        assert tuple(ids) in ours, "TRL rendered a row differently from the model's own template"
        assert batch["labels"][0].tolist() == ours[tuple(ids)]
        seen += 1
    assert seen == len(rows) == 2
    trainer.train()
    assert trainer.state.global_step == 1
    tok.chat_template = original


def test_truncation_is_never_silent(base, tmp_path):
    """--max-length below every trajectory: each one whose trained turns would be cut is kept whole (max_length
    raised), and the console and the model card say how many and why."""
    from transformers import AutoTokenizer

    from refine.distill.labels import build_labels

    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "messages": MSGS}) + "\n" for i in range(3)))
    n = len(build_labels(AutoTokenizer.from_pretrained(base), MSGS)["input_ids"])
    res = CliRunner().invoke(
        app,
        [
            "distill",
            str(p),
            "--base",
            str(base),
            "--out",
            str(tmp_path / "s"),
            "--max-steps",
            "1",
            "--max-length",
            "20",
        ],
        env={"COLUMNS": "300"},
    )
    assert res.exit_code == 0, res.output
    line = f"3 of 3 trajectories longer than max_length 20: 3 kept whole (max_length raised to {n}: a trained turn"
    assert line in " ".join(res.output.split())
    assert line in (tmp_path / "s" / "README.md").read_text()
    stats = json.loads((tmp_path / "s" / "refine_distill.json").read_text())["stats"]
    assert (stats["examples"], stats["kept_whole_over_max_length"], stats["max_length"]) == (3, 3, n)


def test_a_trajectory_longer_than_the_model_is_refused_with_the_reason(base):
    from transformers import AutoTokenizer

    from refine.distill.trainer import tokenize_rows

    tok = AutoTokenizer.from_pretrained(base)
    rows = [{"id": "short", "messages": MSGS}, {"id": "long", "messages": [*MSGS, *MSGS[1:]]}]
    n_short = len(tokenize_rows(tok, rows[:1], 10_000)[0][0]["input_ids"])
    examples, stats = tokenize_rows(tok, rows, 10, cap=n_short)
    assert len(examples) == 1 and stats["kept_whole_over_max_length"] == 1
    assert stats["refused_too_long"] == [{"id": "long", "reason": stats["refused_too_long"][0]["reason"]}]
    assert stats["refused_too_long"][0]["reason"].endswith(f"past the cap of {n_short} (the model's context length)")


# -- `python -m refine.distill`: the accelerate entry, without the CLI ------------------------------------------


def test_the_module_entry_takes_every_training_option_of_the_command():
    import typer

    from refine.distill.launch import parser

    command = typer.main.get_command(app).commands["distill"]
    cli = {opt for p in command.params for opt in p.opts if opt.startswith("-")}
    cli -= {"--show-masks", "--config", "--set", "--print-config", "--help"}
    entry = {opt for action in parser()._actions for opt in action.option_strings} - {"-h", "--help"}
    assert entry == cli


def test_the_module_entry_loads_no_cli_and_refuses_a_wrong_option_in_one_line(data, tmp_path):
    code = (
        "import sys\nfrom refine.distill.launch import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert not [m for m in sys.modules if m.startswith('refine.cli')], 'the CLI was imported'\n"
        "sys.exit(rc)\n"
    )
    args = [str(data), "--out", str(tmp_path / "s"), "--ablation", "nope"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == "Error: --ablation 'nope' is not one of masked, trained, no-refine"
    proc = subprocess.run(
        [sys.executable, "-m", "refine.distill", str(data), "--lora", "--merge"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr.strip()) == (1, "Error: --out is required to train (the folder the "
                                                          "student checkpoint is written to)")  # fmt: skip


def test_python_dash_m_refine_is_the_cli():
    proc = subprocess.run([sys.executable, "-m", "refine", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout, proc.stderr


def test_train_progress_is_one_bar_with_loss_tokens_per_second_and_eta(base, data, tmp_path):
    # Regression (#17 item 7): with tqdm off, transformers' PrinterCallback printed every log as a raw dict
    # ({'loss': ..., 'grad_norm': ...}, then {'train_runtime': ...}) into the bar, and the bar had no tokens/s.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path]), "COLUMNS": "200"}
    args = ["distill", str(data), "--base", str(base), "--out", str(tmp_path / "student"), "--max-steps", "4"]
    args += ["--batch-size", "2", "--lr", "1e-3"]
    out = subprocess.run(
        [sys.executable, "-c", "from refine.cli import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "{'" not in text and "train_runtime" not in text and "grad_norm" not in text, text
    assert "examples/s" not in text, text  # nor the datasets library's bars
    bars = [ln for ln in text.splitlines() if ln.startswith("distill ")]
    assert len(bars) == 1, text  # one bar (its final state), no other line of its own
    found = re.search(r"4/4 loss (\d+\.\d{4}) [\d,]+ tokens/s \d+:\d\d:\d\d", bars[0])
    assert found, bars[0]
    final = json.loads((tmp_path / "student" / "refine_distill.json").read_text())
    last = [h["loss"] for h in final["log_history"] if "loss" in h][-1]
    assert float(found.group(1)) == pytest.approx(last, abs=1e-4)  # the last step's loss, not the one before


def test_the_command_leaves_checkpointing_to_auto_unless_told(tmp_path):
    """#20: the CLI forced gradient checkpointing on, so CPU runs lost the 'auto' choice (+16% tokens/s off)."""
    from refine.distill.launch import build_config

    assert build_config(tmp_path / "s").gradient_checkpointing == "auto"
    assert build_config(tmp_path / "s", no_checkpointing=True).gradient_checkpointing is False
