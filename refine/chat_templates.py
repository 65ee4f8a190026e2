"""Chat templates that mark the trained turns (`{% generation %}`), for TRL's assistant-only loss on exported data.

`TRL_TEMPLATES` maps a template family to its Jinja text; `refine.codec` re-exports it.
"""

from __future__ import annotations

__all__ = ["TRL_TEMPLATES"]


# ------------------------------------------------------------------------------------ mask-marked templates
# Chat templates of common model families, rendering exactly what each family's own template renders, with
# `{% generation %}` around the content and end-of-turn token of every assistant turn whose `loss` is not false.
# TRL's `assistant_only_loss=True` trains the generation blocks, so it trains what `build_labels` trains.
_TRAINED = "message['role'] == 'assistant' and message.get('loss') is not false"


def _chatml(default_system: str | None) -> str:
    head = ""
    if default_system:
        head = (
            "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
            + default_system
            + "<|im_end|>\\n' }}{% endif %}"
        )
    return (
        "{% for message in messages %}"
        + head
        + "{% if "
        + _TRAINED
        + " %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
        "{% endgeneration %}{{ '\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    )


TRL_TEMPLATES: dict[str, str] = {
    # SmolLM2-Instruct (the embedded model) and Qwen2.5-Instruct: ChatML with their default system prompts.
    "smollm2": _chatml("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2.5": _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "chatml": _chatml(None),
    "llama3": (
        "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}{{ '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\\n\\n' }}{% if " + _TRAINED + " %}{% generation %}{{ message['content'] "
        "| trim + '<|eot_id|>' }}{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}{% if " + _TRAINED + " %}{{ '<|assistant|>\\n' }}{% generation %}"
        "{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}{{ '<|' + message['role'] + "
        "'|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
        "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{% if loop.first and system %}{{ '[INST] ' + system + '\\n\\n' + "
        "message['content'] + ' [/INST]' }}{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif " + _TRAINED + " %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    # Gemma 2/3: no system role (folded into the first user turn), `model` for the assistant.
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
        "'\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' }}{% if " + _TRAINED + " %}{% generation %}{{ message['content'] | trim + "
        "'<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}{% else %}{{ (first_user_prefix if loop.first else '') + "
        "message['content'] | trim + '<end_of_turn>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
}
"""Family -> mask-marked chat template (``refine export --format trl --template FAMILY``)."""
