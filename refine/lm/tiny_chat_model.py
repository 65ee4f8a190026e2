"""A tiny random-weight chat model with a byte-level BPE tokenizer, built offline in about a second.

It is for tests and smoke runs of the engine, grammar decoding and distillation plumbing: its answers are noise, but
grammar-constrained decoding still makes them parse, and `local/<folder>` loads it like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_CHAT_TEMPLATE", "make_tiny_chat_model"]

#: ChatML template; the assistant turn and its end token are inside `{% generation %}` for assistant-only losses.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ message['content'] }}"
    "<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "[[ ## answer ## ]]\nThe quick brown fox jumps over the lazy dog.\n\n[[ ## completed ## ]]",
    '{"thought": "open the fridge", "action": "take apple 1", "done": true, "n": 42}',
    "You are a helpful assistant. Respond with the corresponding output fields, starting with the field.",
    "Thought: I should look around.\nAction: go to kitchen\nObservation: You see a table and a mug.",
)


def make_tiny_chat_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512, hidden_size: int = 64) -> Path:
    """Write a random-weight Llama chat model and its tokenizer to `out_dir` and return the folder.

    Args:
        out_dir: folder to create (parents too).
        seed: torch seed for the weights.
        vocab_size: BPE vocabulary size (byte alphabet + merges + 5 special tokens).
        hidden_size: model width (2 layers, 4 heads).

    Returns:
        The folder, loadable with `from_pretrained` and as `local/<folder>`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(list(_CORPUS) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
