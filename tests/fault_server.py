"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for the reliability tests of issue #16.

It answers DSPy's chat prompts with `tests.test_synth_support.teacher_respond`, and can misbehave on a seeded fraction
of calls: HTTP 500, HTTP 429, a hang (no answer for `hang_s`), or a trickle (the answer one byte every `trickle_s`,
which no read timeout catches), a reply whose text holds a lone surrogate ("surrogate"), or HTTP 401/403 (the key was
refused: a fault of the run, not of one call). `faults_after=N` answers the first N calls (a preflight probe, a key
revoked mid-run) before faults start; `retry_after_500` sends a Retry-After header with the 500s (429s always say 0
s), so tests of client retries do not sleep. `vary=True` makes every answer differ (a counter in the script), as a
sampling server's would; `down=True` refuses every call with 503 until set back; `echo_key=True` answers 401 with the
caller's Authorization header in the message, as some servers do.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from refine.testing import _FIELD_LINE, _INPUT_BLOCK, _OUTPUT_BLOCK, _format

__all__ = ["AUTH_FAULTS", "FAULTS", "FaultServer"]

FAULTS = ("500", "429", "hang", "trickle")
AUTH_FAULTS = ("401", "403")


def _parse(body: dict[str, Any]) -> tuple[list[str], dict[str, str], bool]:
    messages = body.get("messages") or []

    def text(m: dict[str, Any]) -> str:
        c = m.get("content")
        return c if isinstance(c, str) else "".join(p.get("text", "") for p in c or [] if isinstance(p, dict))

    system = "\n".join(text(m) for m in messages if m.get("role") == "system")
    last_user = next((text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    block = _OUTPUT_BLOCK.search(system)
    fields = _FIELD_LINE.findall(block.group(1)) if block else []
    inputs = {}
    for name, value in _INPUT_BLOCK.findall(last_user):
        if name != "completed":
            inputs[name] = value.split("\n\nRespond with")[0].strip()
    wants_json = bool(body.get("response_format")) or "JSON object" in last_user
    return fields, inputs, wants_json


class FaultServer:
    """`with FaultServer(...) as server:` serves on `server.url` (an `api_base` ending in /v1)."""

    def __init__(
        self,
        *,
        vary: bool = False,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
        hang_s: float = 30.0,
        trickle_s: float = 0.5,
        echo_key: bool = False,
        faults_after: int = 0,
        retry_after_500: str | None = None,
    ) -> None:
        self.vary = vary
        self.fault_rate = fault_rate
        self.faults = faults
        self.hang_s = hang_s
        self.trickle_s = trickle_s
        self.echo_key = echo_key
        self.faults_after = faults_after
        self.retry_after_500 = retry_after_500
        self.down = False
        self.calls = 0
        self.answered = 0
        self.injected: Counter[str] = Counter()
        self.seeds: list[Any] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server._answer(self, body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], **headers: str) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            handler.send_header(k.replace("_", "-"), v)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        from tests.test_synth_support import teacher_respond

        with self._lock:
            self.calls += 1
            n = self.calls
            self.seeds.append(body.get("seed"))
            fault = self._rng.choice(self.faults) if self._rng.random() < self.fault_rate else None
            fault = fault if n > self.faults_after else None
            if fault:
                self.injected[fault] += 1
        if self.down:
            self._send(handler, 503, {"error": {"message": "server is down", "type": "server_error"}})
            return
        if self.echo_key:
            key = handler.headers.get("Authorization", "")
            self._send(handler, 401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "auth"}})
            return
        if fault in AUTH_FAULTS:
            message = "Incorrect API key provided" if fault == "401" else "This key may not use this model"
            self._send(handler, int(fault), {"error": {"message": message, "type": "invalid_request_error"}})
            return
        if fault == "500":
            hint = {"retry_after": self.retry_after_500} if self.retry_after_500 is not None else {}
            self._send(handler, 500, {"error": {"message": "injected server error", "type": "server_error"}}, **hint)
            return
        if fault == "429":
            self._send(
                handler, 429, {"error": {"message": "injected rate limit", "type": "rate_limit"}}, retry_after="0"
            )
            return
        if fault == "hang":
            time.sleep(self.hang_s)
            return
        fields, inputs, wants_json = _parse(body)
        out = teacher_respond(fields, inputs, body.get("messages"))
        if self.vary and isinstance(out.get("script"), dict):
            out["script"]["environment"] += f" (variant {n})"
        payload = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _format(fields, out, wants_json)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
        if fault == "surrogate":  # a poisoned reply: valid JSON whose text holds a lone surrogate (\ud800)
            message = payload["choices"][0]["message"]
            message["content"] = "Thought: odd \ud800 text\nAction: look\n" + message["content"]
        if fault == "trickle":
            data = json.dumps(payload).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            try:
                for i in range(len(data)):
                    handler.wfile.write(data[i : i + 1])
                    handler.wfile.flush()
                    time.sleep(self.trickle_s)
            except OSError:  # the client gave up
                return
            return
        with self._lock:
            self.answered += 1
        self._send(handler, 200, payload)
