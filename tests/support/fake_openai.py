"""A scripted OpenAI-compatible ``/chat/completions`` server on 127.0.0.1, for tests.

Each test queues the replies it wants (JSON completions, server-sent-event streams, error statuses,
bodies that are not JSON, streams cut off halfway, replies held back until the test ends) and reads
back the requests the server received::

    with FakeOpenAI() as server:
        server.script(stream_reply(text_deltas("Hello", " there")))
        client = openai_client(base_url=server.base_url, api_key="test")
        ...
        assert server.requests[0].json["temperature"] == 0
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-gpt-1"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    # A streamed reply: each piece is written and flushed on its own, in HTTP/1.1 chunked encoding.
    pieces: list[bytes] | None = None
    # Close the connection after the pieces without the closing chunk (a connection that drops).
    drop: bool = False
    # Write ``pieces[:hold_after]`` (or nothing) and wait until the server stops before going on.
    hold_after: int | None = None
    # Close the connection without sending any response at all.
    hang_up: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    *,
    usage: dict[str, int] | None = None,
    finish_reason: str | None = None,
) -> Reply:
    """A whole (non-streamed) chat completion."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop")}
        ],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    return Reply(body=json.dumps(body).encode())


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, usage: Any = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` it is the usage-only chunk that has no choices."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
        "usage": usage,
    }


def text_deltas(*pieces: str) -> list[dict[str, Any]]:
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": piece}) for piece in pieces)]


def stream_reply(
    chunks: list[dict[str, Any] | str],
    *,
    finish_reason: str | None = "stop",
    usage: dict[str, int] | None = None,
    done: bool = True,
    drop: bool = False,
    hold_after: int | None = None,
) -> Reply:
    """An SSE stream of ``chunks`` (a str is sent as the raw ``data:`` payload), then the finish chunk,
    the usage chunk and ``[DONE]``; ``finish_reason=None`` and ``done=False`` leave them out."""
    events = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
    if finish_reason:
        events.append(json.dumps(chunk({}, finish_reason)))
    if usage:
        events.append(json.dumps(chunk(usage=usage)))
    if done:
        events.append("[DONE]")
    pieces = [f"data: {event}\n\n".encode() for event in events]
    return Reply(content_type="text/event-stream", pieces=pieces, drop=drop, hold_after=hold_after)


def error_reply(status: int, message: str = "scripted failure", headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"message": message, "type": "scripted", "code": None}}
    return Reply(status=status, body=json.dumps(body).encode(), headers=headers or {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        fake.record(Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, parsed))
        reply = fake.next_reply()
        if reply.hold_after is not None and reply.pieces is None:
            fake.released.wait(30)
        if reply.hang_up:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.pieces is None:
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self._write(reply.body)
            return
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for number, piece in enumerate(reply.pieces):
            if number == reply.hold_after:
                fake.released.wait(30)
            if not self._write(b"%x\r\n%s\r\n" % (len(piece), piece)):
                return
        if not reply.drop:
            self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout test)
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI


class FakeOpenAI:
    """The server; ``base_url`` ends in ``/v1`` like OpenAI's. Unscripted requests get a 500."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.released = threading.Event()
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply) -> FakeOpenAI:
        with self._lock:
            self._replies.extend(replies)
        return self

    @property
    def unused(self) -> int:
        """How many scripted replies nobody asked for."""
        return len(self._replies)

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def next_reply(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return error_reply(500, "The fake server has no scripted reply left.")

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()  # let held replies finish so their threads end
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
