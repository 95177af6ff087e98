"""A tiny OpenAI-compatible chat-completions server on loopback, for the examples and the tests.

``POST /v1/chat/completions`` answers like DeepSeek or OpenAI: a whole response, or an SSE stream
(``stream=True``) whose last chunk carries ``usage`` when the request asked for it with
``stream_options={"include_usage": True}``. Token counts are fixed per server (``stream_usage``,
``plain_usage``) so that tests can check exact totals; ``chunk_delay_s`` slows a stream down so a
test can cut it in the middle.

    with StubLLM() as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="test")
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StubLLM:
    pieces: list[str] = field(default_factory=lambda: ["你好，", "this is ", "a stub ", "reply."])
    stream_usage: tuple[int, int] = (300_000, 200_000)  # prompt, completion tokens of a stream
    plain_usage: tuple[int, int] = (100_000, 50_000)  # of a non-streaming call
    chunk_delay_s: float = 0.0
    id_prefix: str = "chatcmpl-stub"
    requests: list[dict[str, Any]] = field(default_factory=list)
    streams_cut: int = 0  # streams the client left early

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> StubLLM:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stub.requests.append(body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self.send_error(404)
                    return
                if body.get("stream"):
                    stub._stream(self, body)
                else:
                    stub._plain(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StubLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- responses -------------------------------------------------------------------------------

    def _usage(self, pair: tuple[int, int]) -> dict[str, int]:
        return {"prompt_tokens": pair[0], "completion_tokens": pair[1], "total_tokens": sum(pair)}

    def _plain(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        reply = {
            "id": f"{self.id_prefix}-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "".join(self.pieces)}}
            ],
            "usage": self._usage(self.plain_usage),
        }
        data = json.dumps(reply).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        rid = f"{self.id_prefix}-{next(self._ids)}"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
        }
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        chunks += [
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in self.pieces
        ]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": self._usage(self.stream_usage)})
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for chunk in chunks:
                handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                handler.wfile.flush()
                if self.chunk_delay_s:
                    time.sleep(self.chunk_delay_s)
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.streams_cut += 1
