"""A stand-in for the Hugging Face Hub's file-resolve endpoint, for tests only.

It serves `HEAD`/`GET /{owner}/{repo}/resolve/{revision}/{filename}` from a dict of files with
the headers `huggingface_hub` relies on (`X-Repo-Commit`, `ETag`, `Content-Length`), so the real
download code runs against it through HF_ENDPOINT. Nothing else of the Hub is imitated.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, bytes]) -> None:
        # keys: "owner/repo/filename"
        self.files = files
        self.requests: list[tuple[str, str]] = []

    def lookup(self, path: str) -> bytes | None:
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        key = "/".join(parts[:2] + parts[4:])
        return self.files.get(key)


@contextmanager
def serve_hub(
    files: dict[str, bytes], *, download_seconds: float = 0.0, host: str = "127.0.0.1"
) -> Iterator[tuple[str, FakeHub]]:
    """Serve `files` on `host` (e.g., a bridge gateway, for containers); `download_seconds` spreads
    each GET body over that much time."""
    hub = FakeHub(files)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _head(self) -> bytes | None:
            hub.requests.append((self.command, self.path))
            body = hub.lookup(self.path.split("?")[0])
            if body is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            return body

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            body = self._head()
            if body is None:
                return
            chunks = 20 if download_seconds else 1
            step = -(-len(body) // chunks)
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()
                time.sleep(download_seconds / chunks)

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()
