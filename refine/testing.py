"""Scripted fake LMs for tests, examples and benchmarks: deterministic, offline, and schema-aware.

`ScriptedLM(respond)` is a real `dspy.LM` with a custom engine. For every call it reads which output fields the
adapter asked for and the input field values, calls `respond(fields, inputs, messages)`, and formats the returned
dict the way the adapter expects (ChatAdapter `[[ ## field ## ]]` blocks, or a JSON object when a JSON schema or
JSON answer was requested). So it answers any DSPy signature, including optimizer proposers and GEPA reflection.

Example:
    >>> import dspy
    >>> lm = ScriptedLM(lambda fields, inputs, messages: {"answer": inputs["question"].upper()})
    >>> with dspy.context(lm=lm):
    ...     dspy.Predict("question -> answer")(question="hi").answer
    'HI'
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, Usage

__all__ = ["FlakyEngine", "ScriptedEngine", "ScriptedLM", "parse_request_fields"]

Respond = Callable[[list[str], dict[str, Any], list[dict[str, str]]], "dict[str, Any] | str"]

_OUTPUT_BLOCK = re.compile(r"Your output fields are:\n(.*?)(?:\n\n|\Z)", re.S)
_FIELD_LINE = re.compile(r"^\d+\.\s+`([^`]+)`", re.M)
_INPUT_BLOCK = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(getattr(p, "text", "") or "" for p in content)
    return str(content or "")


def parse_request_fields(request: Request) -> tuple[list[str], dict[str, Any], list[dict[str, str]], bool]:
    """From a DSPy request: (output field names, input values of the last user turn, chat messages, wants_json)."""
    system = _text(request.system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m.role, "content": m.text or ""} for m in request.messages
    ]
    fields: list[str] = []
    block = _OUTPUT_BLOCK.search(system)
    if block:
        fields = _FIELD_LINE.findall(block.group(1))
    rf = request.config.response_format
    if rf and rf.get("type") == "json_schema" and not fields:
        fields = list(rf.get("schema", {}).get("properties", {}))
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    inputs: dict[str, Any] = {}
    for name, value in _INPUT_BLOCK.findall(last_user):
        if name == "completed":
            continue
        # The trailing instruction of the user message is not part of the last input's value (split before
        # stripping, so an empty last input stays empty).
        value = re.split(r"\n*Respond with (?:the corresponding output fields|a JSON object)", value)[0]
        inputs[name] = value.strip()
    wants_json = bool(rf) or "JSON object" in last_user or "JSON object" in system
    return fields, inputs, messages, wants_json


def _format(fields: list[str], values: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps({f: values.get(f) for f in fields} if fields else values, default=str)
    parts = []
    for f in fields or list(values):
        v = values.get(f, "")
        if not isinstance(v, str):
            v = json.dumps(v, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o))
        parts.append(f"[[ ## {f} ## ]]\n{v}")
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


class ScriptedEngine:
    """A DSPy 3.4 engine (`complete(Request) -> Response`) driven by a Python `respond` function.

    `respond` may return a dict of output values (formatted for the adapter) or a raw string (sent as is, e.g. to
    simulate malformed output). `latency` sleeps per call; `calls` counts calls and `requests` keeps the last 1000.
    """

    def __init__(self, respond: Respond, latency: float = 0.0) -> None:
        self.respond = respond
        self.latency = latency
        self.calls = 0
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def complete(self, request: Request) -> Response:
        with self._lock:
            self.calls += 1
            self.requests.append(request)
            del self.requests[:-1000]
        if self.latency:
            time.sleep(self.latency)
        fields, inputs, messages, wants_json = parse_request_fields(request)
        out = self.respond(fields, inputs, messages)
        text = out if isinstance(out, str) else _format(fields, out, wants_json)
        n_in = sum(len(m["content"].split()) for m in messages)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(text),
            finish_reason="stop",
            usage=Usage(input_tokens=n_in, output_tokens=len(text.split()), total_tokens=n_in + len(text.split())),
        )

    def close(self) -> None:
        return None


class FlakyEngine(ScriptedEngine):
    """A `ScriptedEngine` that fails a fraction of calls, for fault-injection tests.

    Failures cycle through: a timeout (retryable), a rate-limit error (retryable) and malformed output (not an
    exception: text no adapter can parse). Seeded, so a test run is reproducible.
    """

    def __init__(self, respond: Respond, failure_rate: float = 0.3, seed: int = 0, latency: float = 0.0) -> None:
        super().__init__(respond, latency)
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self.failures: dict[str, int] = {"timeout": 0, "rate_limit": 0, "malformed": 0}

    def complete(self, request: Request) -> Response:
        from dspy.lm15 import RateLimitError, TimeoutError

        with self._lock:
            roll = self._rng.random()
            kind = self._rng.choice(("timeout", "rate_limit", "malformed")) if roll < self.failure_rate else None
            if kind:
                self.failures[kind] += 1
        if kind == "timeout":
            raise TimeoutError("fake LM timed out")
        if kind == "rate_limit":
            raise RateLimitError("fake LM rate limit exceeded")
        if kind == "malformed":
            return Response(
                id=None,
                model=request.model,
                message=Message.assistant('{"oops": unterminated'),
                finish_reason="stop",
                usage=Usage(input_tokens=1, output_tokens=2, total_tokens=3),
            )
        return super().complete(request)


class ScriptedLM(dspy.LM):
    """A `dspy.LM` answering through `ScriptedEngine(respond)`; caching is off so every call reaches `respond`."""

    def __init__(self, respond: Respond, model: str = "fake/scripted", latency: float = 0.0, **kwargs: Any) -> None:
        engine = kwargs.pop("engine", None) or ScriptedEngine(respond, latency)
        kwargs.setdefault("cache", False)
        kwargs.setdefault("num_retries", 0)
        super().__init__(model, engine=engine, **kwargs)
        self.script_engine = engine

    @property
    def calls(self) -> int:
        return self.script_engine.calls
