"""TEST DOUBLE: a stand-in for Cloudflare's edge in front of a named tunnel with several replicas.

Each replica is a cloudflared connector (here the stand-in cloudflared, whose port 8080 proxies to
its stack). Like the edge, this front sends each new request to one of the connectors that are
registered right now -- those whose metrics server answers /ready with 200 -- and streams the
answer back. A connector that unregisters (cloudflared on SIGTERM) gets no new requests; the ones
it has finish. It polls /ready every `poll` seconds, as the edge would learn of a (un)registration.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx


class Edge:
    def __init__(self, poll: float = 0.1) -> None:
        self.poll = poll
        self._connectors: dict[str, tuple[str, str]] = {}  # name -> (origin URL, /ready URL)
        self._ready: list[str] = []
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self.served: dict[str, int] = {}
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def register(self, name: str, origin: str, ready_url: str) -> None:
        with self._lock:
            self._connectors[name] = (origin, ready_url)

    def ready(self) -> list[str]:
        with self._lock:
            return list(self._ready)

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _watch(self) -> None:
        with httpx.Client(timeout=1, trust_env=False) as client:
            while not self._stop.is_set():
                with self._lock:
                    connectors = dict(self._connectors)
                ready = []
                for name, (_, ready_url) in connectors.items():
                    try:
                        if client.get(ready_url).status_code == 200:
                            ready.append(name)
                    except httpx.HTTPError:
                        pass
                with self._lock:
                    self._ready = ready
                time.sleep(self.poll)

    def _pick(self) -> tuple[str, str] | None:
        with self._lock:
            if not self._ready:
                return None
            name = self._ready[next(self._turn) % len(self._ready)]
            self.served[name] = self.served.get(name, 0) + 1
            return name, self._connectors[name][0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        edge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                picked = edge._pick()
                if picked is None:
                    self.send_error(530, "no connector is registered (the tunnel is down)")
                    return
                _, origin = picked
                target = urlsplit(origin)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    while chunk := answer.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                finally:
                    upstream.close()
                self.close_connection = True

            do_GET = _proxy
            do_POST = _proxy

        return Handler
