"""A fake LLM server on 127.0.0.1 for tests: enough of OpenAI chat.completions and Anthropic
/v1/messages (text, tool calls, usage, errors) to drive the real SDKs over real HTTP.

Tests queue replies and read back every request the server received::

    with FakeLLM() as fake:
        fake.queue(FakeReply(tool_calls=[("set_output", {"key": "k", "value": 1})]))
        provider = OpenAICompatibleProvider(fake.openai_base_url, "sk-test", "gpt-test", ...)
        ...
        assert fake.requests[0].headers["authorization"] == "Bearer sk-test"

``serve(handler_class)`` starts any other ``BaseHTTPRequestHandler`` the same way.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close the socket under the handler; expected in tests


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FakeReply:
    """One reply. ``status`` != 200 sends a provider-shaped error, ``raw`` sends those bytes
    verbatim with a JSON content type, ``delay`` sleeps first (for timeouts), ``echo_key``
    puts the received API key into the error message (as some servers do)."""

    text: str | None = "ok"
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    usage: tuple[int, int] = (11, 7)
    status: int = 200
    error_message: str = "upstream failure"
    echo_key: bool = False
    raw: bytes | None = None
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self._cm: Any = None
        self.base_url = ""

    # --- test API ---
    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def queue(self, *replies: FakeReply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def _next(self) -> FakeReply:
        with self._lock:
            return self._replies.popleft() if self._replies else FakeReply()

    def __enter__(self) -> FakeLLM:
        self._cm = serve(self._handler())
        self.base_url = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)

    # --- the server ---
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append(Recorded("POST", self.path, headers, body))
                reply = fake._next()
                if reply.delay:
                    time.sleep(reply.delay)
                if self.path == "/v1/chat/completions":
                    status, payload = fake._openai(reply, body, headers)
                elif self.path == "/v1/messages":
                    status, payload = fake._anthropic(reply, body, headers)
                else:
                    status, payload = 404, {"error": {"message": f"no route {self.path}"}}
                data = reply.raw if reply.raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        return Handler

    @staticmethod
    def _key(headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth else headers.get("x-api-key", "")

    def _error(self, reply: FakeReply, headers: dict[str, str]) -> dict[str, Any]:
        message = reply.error_message
        if reply.echo_key:
            message = f"Incorrect API key provided: {self._key(headers)}"
        return {"error": {"message": message, "type": "api_error"}}

    def _openai(self, reply: FakeReply, body: Any, headers: dict[str, str]
                ) -> tuple[int, dict[str, Any]]:
        if reply.status != 200:
            return reply.status, self._error(reply, headers)
        model = body.get("model", "") if isinstance(body, dict) else ""
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_fake_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)]
        prompt, completion = reply.usage
        return 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}

    def _anthropic(self, reply: FakeReply, body: Any, headers: dict[str, str]
                   ) -> tuple[int, dict[str, Any]]:
        if reply.status != 200:
            error = self._error(reply, headers)
            return reply.status, {"type": "error", "error": error["error"]}
        model = body.get("model", "") if isinstance(body, dict) else ""
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        content.extend({"type": "tool_use", "id": f"toolu_fake_{i}", "name": name, "input": args}
                       for i, (name, args) in enumerate(reply.tool_calls))
        prompt, completion = reply.usage
        return 200, {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion}}
