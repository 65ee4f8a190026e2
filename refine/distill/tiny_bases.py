"""Tiny offline models and tokenizers (random Llama + in-process BPE) for tests, smoke runs and benchmarks.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in memory on a few sentences, so any
Unicode text round-trips, and it carries a real chat template (ChatML, Llama-3 or Mistral style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CHATML_TEMPLATE",
    "LLAMA3_TEMPLATE",
    "MISTRAL_TEMPLATE",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "save_tiny_model",
]

# ChatML as written by SmolLM2/Qwen2.5 (no generation markers).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral-Instruct style: [INST] ... [/INST]answer</s>, system folded into the first user turn.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{% if loop.first and system %}{{ '[INST] ' + system + '\n\n' + "
    "message['content'] + ' [/INST]' }}{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

_STYLES = {
    "chatml": (CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "llama3": (
        LLAMA3_TEMPLATE,
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "mistral": (MISTRAL_TEMPLATE, "<s>", "</s>", ["<s>", "</s>"]),
}

_CORPUS = [
    "Thought: I should look around first.\nAction: look",
    "Thought: The key is on the table, I will take it.\nAction: take key from table",
    "Observation: You are in a kitchen. You see a fridge 1, a table 1 and a door.",
    "Task: open the door. The door is locked; a key opens it. Nothing happens. Invalid action.",
    "You are an agent acting in a text environment. Available actions: go to X, open X, take X from Y.",
    "system user assistant 0123456789 {}[]()<>:;,.!?'\"-_/\\ ü é 日本 ✓",
]


def make_tiny_tokenizer(style: str = "chatml", vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained in memory, with the chat template of `style` (chatml|llama3|mistral)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, specials = _STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    all_specials = ["<|pad|>", *specials]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=all_specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<|pad|>", additional_special_tokens=specials
    )
    hf.chat_template = template
    return hf


def make_tiny_model(tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A random `LlamaForCausalLM` sized to `tokenizer` (about 100k parameters at the defaults)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_model(out_dir: str | Path, style: str = "chatml", **model_kwargs: Any) -> Path:
    """Write a tiny random model + tokenizer as a plain HF folder (a base model for tests) and return its path."""
    out = Path(out_dir)
    tok = make_tiny_tokenizer(style)
    model = make_tiny_model(tok, **model_kwargs)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
