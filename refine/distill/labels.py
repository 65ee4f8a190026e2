"""Turn-masked training labels built from a tokenizer's own chat template, without `{% generation %}` markers.

`build_labels` renders the conversation with the tokenizer's chat template, then renders it again up to each
assistant turn (with and without that turn) to learn, in characters of the full render, where every assistant turn
starts and where it ends. The full render is tokenized once with offsets; a token is trained when it starts inside
a trained assistant span. Tokens of system and user turns, of the template's headers, and of assistant turns with
``loss: false`` get ``-100``. A trained span runs from the first character after the assistant header up to and
including the turn's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ``<|end|>``); whitespace the
template writes after that token belongs to the next turn, and what a template appends after the last turn only
(Phi-3's ``<|endoftext|>`` when no generation prompt is asked for) is not part of any turn.

Every render of a prefix must be a prefix of the full render, and the token ids must equal
``apply_chat_template(messages, tokenize=True)``; otherwise a `TrainingError` says which turn disagrees.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from refine.errors import TrainingError

__all__ = ["IGNORE_INDEX", "LabeledExample", "build_labels", "fit_length", "render_mask"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

LabeledExample = dict[str, list[int]]


def _clean(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise TrainingError(
                f"message {i} has role {role!r}; training rows use the roles 'system', 'user' and 'assistant' "
                "(convert ShareGPT 'from' values with refine.distill.training_rows.load_rows)"
            )
        if not isinstance(content, str):
            raise TrainingError(f"message {i} ({role}) has no text content; every message needs a string 'content'")
        out.append({"role": role, "content": content})
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, chat_template: str | None) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=chat_template
        )
    except Exception as exc:  # jinja raise_exception(), missing template, ...
        raise TrainingError(
            f"the chat template of {type(tokenizer).__name__} cannot render this conversation "
            f"({len(messages)} messages, roles {[m['role'] for m in messages]}): {exc}. Use a base model whose "
            "template accepts system/user/assistant turns, or pass chat_template=..."
        ) from exc


def _render_empty_prompt(tokenizer: Any, chat_template: str | None) -> str:
    # A conversation that opens with the assistant: the header is whatever the template emits for no messages.
    try:
        return tokenizer.apply_chat_template(
            [], tokenize=False, add_generation_prompt=True, chat_template=chat_template
        )
    except Exception:
        return ""


def _without_closing(tokenizer: Any, upto: str, full: str) -> str:
    """Drop what a template appends after the last turn only (Phi-3's end-of-text when no generation prompt).

    The cut is the latest token boundary of ``upto`` before which it agrees with the full render and after which it
    equals the full render's own ending; a template that appends nothing returns ``upto`` unchanged.
    """
    if full.startswith(upto):
        return upto
    enc = tokenizer(upto, add_special_tokens=False, return_offsets_mapping=True)
    for start, _end in reversed(enc["offset_mapping"]):
        closing = upto[start:]
        if closing and full.startswith(upto[:start]) and full.endswith(closing):
            return upto[:start]
    return upto


def _trained_spans(
    tokenizer: Any, msgs: list[dict[str, str]], trained: list[bool], full: str, chat_template: str | None
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or not trained[i]:
            continue
        if i:
            head = _render(tokenizer, msgs[:i], True, chat_template)
        else:
            head = _render_empty_prompt(tokenizer, chat_template)
        upto = _without_closing(tokenizer, _render(tokenizer, msgs[: i + 1], False, chat_template), full)
        for name, text in (("the prompt before", head), ("the conversation up to", upto)):
            if not full.startswith(text):
                raise TrainingError(
                    f"the chat template renders {name} assistant turn {i} differently from the full conversation "
                    "(it rewrites earlier turns depending on later ones, e.g. drops reasoning or injects dates), so "
                    "per-turn loss masks cannot be aligned; use a template that renders turns append-only"
                )
        if not upto.startswith(head):
            raise TrainingError(
                f"the chat template's generation prompt for assistant turn {i} is not a prefix of the rendered turn; "
                "check that the template's add_generation_prompt header matches its assistant header"
            )
        end = len(upto.rstrip())
        if end <= len(head):
            raise TrainingError(f"assistant turn {i} renders to no text; drop empty assistant turns before training")
        spans.append((len(head), end))
    return spans


def build_labels(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    chat_template: str | None = None,
    max_length: int | None = None,
) -> LabeledExample:
    """Tokenize a conversation with the tokenizer's chat template and build per-token labels.

    Args:
        tokenizer: A fast Hugging Face tokenizer with a chat template.
        messages: ``{"role", "content", "loss"?}`` dicts. Assistant turns are trained unless ``loss`` is false.
        chat_template: Overrides the tokenizer's template.
        max_length: Keep only the first ``max_length`` tokens.

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` of equal length; labels are the token ids on trained tokens
        and ``-100`` elsewhere.

    Raises:
        TrainingError: The template is missing, cannot render the roles, or renders turns in a way that
            cannot be aligned with the full conversation.

    Example:
        >>> ex = build_labels(tok, [{"role": "user", "content": "hi"},
        ...                         {"role": "assistant", "content": "Thought: t\\nAction: a"}])  # doctest: +SKIP
        >>> [i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100]  # doctest: +SKIP
    """
    if not messages:
        raise TrainingError("a training row has no messages")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} has no chat template; "
            "save one with the model (tokenizer.chat_template = ...) or pass chat_template=..."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(
            f"{type(tokenizer).__name__} is a slow tokenizer; build_labels needs character offsets from a fast "
            "(tokenizers-backed) tokenizer: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    msgs = _clean(messages)
    trained = [m.get("role") == "assistant" and m.get("loss", True) is not False for m in messages]
    full = _render(tokenizer, msgs, False, chat_template)
    spans = _trained_spans(tokenizer, msgs, trained, full, chat_template)
    if spans:
        # the last turn's span must not take in what the template appends after the conversation (Phi-3's
        # <|endoftext|>): the closing is what the full render has and a render with one more turn lacks
        try:
            longer = _render(tokenizer, [*msgs, {"role": "user", "content": "x"}], False, chat_template)
        except TrainingError:
            longer = full
        body_end = len(_without_closing(tokenizer, full, longer).rstrip())
        spans = [(a, min(b, body_end)) for a, b in spans if a < body_end]

    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    reference = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False, chat_template=chat_template)
    if isinstance(reference, Mapping):
        reference = reference["input_ids"]
    if list(reference) != ids:
        raise TrainingError(
            "tokenizing the rendered conversation does not reproduce apply_chat_template(tokenize=True) "
            f"({len(ids)} vs {len(reference)} tokens); the tokenizer adds or merges special tokens differently"
        )
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start < spans[k][1]:
            labels[t] = ids[t]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def render_mask(tokenizer: Any, example: Mapping[str, Sequence[int]]) -> list[tuple[str, bool]]:
    """Decode an example into ``(token text, trained)`` pairs, for displaying masks."""
    return [
        (tokenizer.decode([i]), lab != IGNORE_INDEX)
        for i, lab in zip(example["input_ids"], example["labels"], strict=True)
    ]


def fit_length(example: LabeledExample, max_length: int, cap: int | None) -> tuple[LabeledExample | None, str]:
    """Fit one labelled example to ``max_length`` without ever cutting a trained token silently.

    Returns ``(example, status)``: ``"fits"``; ``"truncated"`` (only masked tokens after the last trained one were
    cut); ``"kept_whole"`` (a trained token lies past ``max_length`` and the whole example is within ``cap``: the
    caller raises its max length to fit); or ``(None, reason)`` when it is longer than ``cap``.
    """
    n = len(example["input_ids"])
    if n <= max_length:
        return example, "fits"
    last = max((i for i, lab in enumerate(example["labels"]) if lab != IGNORE_INDEX), default=-1)
    if last < max_length:
        return {k: list(v[:max_length]) for k, v in example.items()}, "truncated"
    if cap is not None and n <= cap:
        return example, "kept_whole"
    return None, f"{n} tokens, past the cap of {cap} (the model's context length)"
