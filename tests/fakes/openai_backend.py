"""A stand-in OpenAI-compatible backend for the chat interface's tests only (a test double).

A real inference server cannot be told what to say, so the tests that need a particular reply, a
particular delay or a particular failure talk to this instead. Standard library only, so it runs
in the chat image itself (`python3 /fakes/openai_backend.py`) as well as in the test process.
The first path segment picks the behaviour, so one process is several backends:

    /xss/...      streams REPLY: markdown plus HTML and script that must render as inert text
    /slow/...     like /xss, but waits --delay seconds before the first token
    /broken/...   /health says ok, but a chat request gets its connection closed, no response
    /loading/...  /health and chat answer 503 {"status": "loading"}

Each mode answers GET <mode>/health, GET <mode>/v1/models and POST <mode>/v1/chat/completions
(streamed with "stream": true, else one JSON body). GET /_requests lists the requests seen, as
[method, path, body] triples, so tests can tell which backend a request reached.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = (
    "Here is **bold**, *italic*, `code`, a [safe link](https://example.com/docs) and a "
    "[bad link](javascript:alert(3)).\n\n"
    "<img src=x onerror=alert(1)><script>alert(2)</script>\n\n"
    '<a href="javascript:alert(4)">click</a>\n\n'
    "- one\n- two\n\n"
    "```\n<b>not bold</b>\n```\n"
)
CHUNK = 7  # characters per streamed chunk: the HTML tags arrive split across events
MODES = ("xss", "slow", "broken", "loading")
# In OpenAI's error shape, as a real backend answers (the gateway passes it on as it came).
NOT_FOUND = {"error": {"message": "not found", "type": "not_found_error", "param": None, "code": None}}


def make_handler(delay: float, seen: list[list[Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, str]:
            mode, _, rest = self.path.lstrip("/").partition("/")
            return mode, "/" + rest

        def do_GET(self) -> None:
            if self.path == "/_requests":
                self._json(200, seen)
                return
            seen.append(["GET", self.path, None])
            mode, rest = self._route()
            if mode not in MODES:
                self._json(404, {"error": {"message": "no such mode"}})
            elif rest == "/health":
                if mode == "loading":
                    self._json(503, {"status": "loading"})
                else:
                    self._json(200, {"status": "ok"})
            elif rest == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": f"fake-{mode}", "object": "model"}]})
            else:
                self._json(404, NOT_FOUND)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            seen.append(["POST", self.path, body])
            mode, rest = self._route()
            if mode not in MODES or rest != "/v1/chat/completions":
                self._json(404, NOT_FOUND)
                return
            if mode == "broken":
                self.close_connection = True
                return
            if mode == "loading":
                self._json(503, {"error": {"message": "the model is still loading", "code": "model_loading"}})
                return
            model = body.get("model") or f"fake-{mode}"
            if not body.get("stream"):
                usage = {"prompt_tokens": 3, "completion_tokens": len(REPLY), "total_tokens": 3 + len(REPLY)}
                message = {"role": "assistant", "content": REPLY}
                self._json(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": usage,
                    },
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.flush()
            if mode == "slow":
                time.sleep(delay)
            pieces = [REPLY[i : i + CHUNK] for i in range(0, len(REPLY), CHUNK)]
            for n, piece in enumerate(pieces):
                last = n == len(pieces) - 1
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
                    ],
                }
                if last:
                    chunk["usage"] = {
                        "prompt_tokens": 3,
                        "completion_tokens": len(pieces),
                        "total_tokens": 3 + len(pieces),
                    }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


@contextmanager
def serve_backend(
    host: str = "127.0.0.1", port: int = 0, delay: float = 2.0
) -> Iterator[tuple[str, list[list[Any]]]]:
    """Serve in a thread; yields the base URL (without mode) and the list of requests seen."""
    seen: list[list[Any]] = []
    server = ThreadingHTTPServer((host, port), make_handler(delay, seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds /slow waits before its first token")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.delay, []))
    print(f"fake OpenAI backend on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
