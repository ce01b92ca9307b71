"""TEST DOUBLE: a stand-in for Cloudflare's edge in front of named tunnels, for tests only.

A named tunnel is a token, one public hostname and the tunnel's configuration (its ingress rules),
which live here, at the "edge", as they live in Cloudflare: `add_tunnel` is what a user sets once
in the dashboard. Connectors are the stand-in cloudflared (tests/fakes/cloudflared) run with that
token: each registers itself here (POST /test-double/connectors, on the control address that the
token names), gets the ingress rules in the answer, and unregisters on SIGTERM. Several connectors
of one tunnel are its replicas.

How a request for the public hostname is routed, and why:

- It goes to one of the tunnel's connectors that are registered and ready right now, in turn.
  Cloudflare promises no steering among replicas ("the network will pick any connection
  available"); taking turns makes the spread visible in a test.
- A connector whose connection fails before the request could be sent -- refused, unreachable,
  reset while sending, or (in this stand-in) a restarted connector at the same address that answers
  421 with X-Test-Double-Wrong-Connector -- is marked not ready and the request goes to the next
  connector. That is the one retry Cloudflare documents for replicas: "If a connection fails, we
  will retry others". The origin has not seen such a request.
- Nothing else is retried. A connector that dies after it received a request gives a 502 when no
  answer had started, and a cut stream when one had: its requests in flight are lost, as they are
  with a real edge. So a test that kills a connector and expects no failure has to kill it between
  two of its requests; `kill_between_requests` does exactly that, and says so.
- No connector ready: 530, Cloudflare's status for a tunnel that has no connection (error 1033).

The edge learns of an unregistration at once, and of a connector that died without unregistering
by polling its metrics server's /ready (every `poll` seconds; a real edge notices a dead
connection on its own timescale): /ready must answer 200 with readyConnections >= 1 and the
connectorId it registered with.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

WRONG_CONNECTOR = "X-Test-Double-Wrong-Connector"
FOR_CONNECTOR = "X-Test-Double-Connector"


@dataclass
class Tunnel:
    id: str
    secret: str
    hostname: str
    ingress: list[dict[str, str]]


@dataclass
class Connector:
    id: str
    tunnel: str
    address: str  # the IP the connector registered from
    port: int
    metrics_port: int
    ready: bool = True
    in_flight: int = 0
    served: int = 0
    registered_at: float = field(default_factory=time.monotonic)

    @property
    def origin(self) -> tuple[str, int]:
        return self.address, self.port


class Edge:
    def __init__(self, control_host: str, *, poll: float | None = 0.1, connect_timeout: float = 2.0) -> None:
        """`control_host`: an address of this host that the connectors' containers reach (a
        Docker bridge's gateway); the public side listens on 127.0.0.1. `poll` None: no /ready
        polling, so that only the routing notices a dead connector."""
        self.connect_timeout = connect_timeout
        self.tunnels: dict[str, Tunnel] = {}
        self.connectors: dict[str, Connector] = {}
        self.retried = 0  # requests sent to another connector after a failed connection
        self.no_connector = 0  # requests answered 530
        self._lock = threading.RLock()
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._public = ThreadingHTTPServer(("127.0.0.1", 0), self._public_handler())
        self._control = ThreadingHTTPServer((control_host, 0), self._control_handler())
        for server in (self._public, self._control):
            server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._public.server_address[1]}"
        self.control_url = f"http://{control_host}:{self._control.server_address[1]}"
        self._threads = [
            threading.Thread(target=self._public.serve_forever, daemon=True),
            threading.Thread(target=self._control.serve_forever, daemon=True),
        ]
        if poll is not None:
            self._threads.append(threading.Thread(target=self._watch, args=(poll,), daemon=True))
        for thread in self._threads:
            thread.start()

    # -- the dashboard -------------------------------------------------------------------------

    def add_tunnel(self, hostname: str, service: str) -> str:
        """A named tunnel whose public hostname goes to `service` (e.g. http://inference:8080);
        returns its token, which every replica's connector gets as TUNNEL_TOKEN."""
        tunnel = Tunnel(
            id=secrets.token_hex(16),
            secret=secrets.token_urlsafe(24),
            hostname=hostname,
            ingress=[{"hostname": hostname, "service": service}, {"service": "http_status:404"}],
        )
        with self._lock:
            self.tunnels[tunnel.id] = tunnel
        claims = {"a": "test-double-account", "t": tunnel.id, "s": tunnel.secret, "e": self.control_url}
        return base64.b64encode(json.dumps(claims).encode()).decode()

    # -- what tests look at --------------------------------------------------------------------

    def ready(self) -> list[Connector]:
        with self._lock:
            return [c for c in self.connectors.values() if c.ready]

    def connector_at(self, address: str) -> Connector | None:
        """The newest connector that registered from `address`."""
        with self._lock:
            found = [c for c in self.connectors.values() if c.address == address]
        return max(found, key=lambda c: c.registered_at) if found else None

    def served_by(self, address: str) -> int:
        with self._lock:
            return sum(c.served for c in self.connectors.values() if c.address == address)

    def kill_between_requests(self, address: str, kill: Callable[[], None], timeout: float = 60) -> None:
        """Run `kill` (which kills the connector at `address`) at a moment when that connector has
        no request in flight, holding the routing lock meanwhile, so that it gets none during the
        kill either. A request in flight on a killed connector is lost with a real edge too; what
        this isolates is what happens to every request after the kill."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = [c for c in self.connectors.values() if c.address == address and c.in_flight]
                if not busy:
                    kill()
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the connector at {address} was never idle within {timeout} s")
            time.sleep(0.002)

    def close(self) -> None:
        self._stop.set()
        for server in (self._public, self._control):
            server.shutdown()
            server.server_close()

    # -- connectors --------------------------------------------------------------------------

    def _register(self, body: dict[str, Any], address: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            tunnel = self.tunnels.get(str(body.get("tunnel")))
            if tunnel is None or not secrets.compare_digest(str(body.get("secret")), tunnel.secret):
                return 401, {"error": "Unauthorized: invalid tunnel credentials"}
            connector = Connector(
                id=str(body["connector"]),
                tunnel=tunnel.id,
                address=address,
                port=int(body["port"]),
                metrics_port=int(body["metricsPort"]),
            )
            self.connectors[connector.id] = connector
            return 200, {"ingress": tunnel.ingress}

    def _unregister(self, connector_id: str) -> None:
        with self._lock:
            connector = self.connectors.get(connector_id)
            if connector is not None:
                connector.ready = False

    def _watch(self, poll: float) -> None:
        with httpx.Client(timeout=1, trust_env=False) as client:
            while not self._stop.is_set():
                with self._lock:
                    watched = [c for c in self.connectors.values() if c.ready]
                for connector in watched:
                    alive = False
                    try:
                        answer = client.get(f"http://{connector.address}:{connector.metrics_port}/ready")
                        body = answer.json()
                        alive = (
                            answer.status_code == 200
                            and body.get("readyConnections", 0) >= 1
                            and body.get("connectorId") == connector.id
                        )
                    except (httpx.HTTPError, ValueError):
                        pass
                    if not alive:
                        with self._lock:
                            connector.ready = False
                time.sleep(poll)

    def _pick(self, tunnel: str, tried: set[str]) -> Connector | None:
        with self._lock:
            candidates = [
                c for c in self.connectors.values() if c.tunnel == tunnel and c.ready and c.id not in tried
            ]
            if not candidates:
                return None
            connector = candidates[next(self._turn) % len(candidates)]
            connector.in_flight += 1
            return connector

    def _done(self, connector: Connector, served: bool) -> None:
        with self._lock:
            connector.in_flight -= 1
            connector.served += served

    def _tunnel_for(self, host: str) -> Tunnel | None:
        with self._lock:
            by_host = [t for t in self.tunnels.values() if t.hostname == host.split(":")[0]]
            if by_host:
                return by_host[0]
            return next(iter(self.tunnels.values())) if len(self.tunnels) == 1 else None

    # -- HTTP ----------------------------------------------------------------------------------

    def _control_handler(self) -> type[BaseHTTPRequestHandler]:
        edge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path != "/test-double/connectors":
                    self._answer(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self._answer(400, {"error": "not JSON"})
                    return
                self._answer(*edge._register(body, self.client_address[0]))

            def do_DELETE(self) -> None:
                prefix = "/test-double/connectors/"
                if not self.path.startswith(prefix):
                    self._answer(404, {"error": "not found"})
                    return
                edge._unregister(self.path[len(prefix) :])
                self._answer(200, {})

        return Handler

    def _public_handler(self) -> type[BaseHTTPRequestHandler]:
        edge = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1, for chunked answers: a stream cut by a dying connector then ends without
            # its last chunk, which the client sees as an error, not as a short answer.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                self.close_connection = True
                tunnel = edge._tunnel_for(self.headers.get("Host", ""))
                if tunnel is None:
                    self.send_error(404, "no tunnel has this hostname")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                headers["Host"] = tunnel.hostname
                tried: set[str] = set()
                while True:
                    connector = edge._pick(tunnel.id, tried)
                    if connector is None:
                        with edge._lock:
                            edge.no_connector += 1
                        self.send_error(530, "no connector of the tunnel is registered (error 1033)")
                        return
                    tried.add(connector.id)
                    sent = self._try(connector, body, {**headers, FOR_CONNECTOR: connector.id})
                    if sent:
                        return
                    with edge._lock:
                        connector.ready = False
                        edge.retried += 1

            def _try(self, connector: Connector, body: bytes | None, headers: dict[str, str]) -> bool:
                """Send the request through `connector`; False if its connection failed before the
                request was sent (the caller tries another connector), True once it was."""
                host, port = connector.origin
                upstream = http.client.HTTPConnection(host, port, timeout=edge.connect_timeout)
                served = False
                try:
                    try:
                        upstream.connect()
                        assert upstream.sock is not None
                        upstream.sock.settimeout(120)
                        upstream.request(self.command, self.path, body=body, headers=headers)
                    except OSError:
                        return False
                    try:
                        answer = upstream.getresponse()
                    except (OSError, http.client.HTTPException):
                        self.send_error(502, "the connector's connection failed (the request was sent)")
                        return True
                    if answer.status == 421 and answer.getheader(WRONG_CONNECTOR):
                        return False
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    # Streamed as it comes. A connector that dies now cuts the stream: the last
                    # chunk never comes, as behind a real edge.
                    try:
                        while chunk := answer.read1(65536):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                    except (OSError, http.client.HTTPException):
                        return True
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    served = True
                    return True
                finally:
                    upstream.close()
                    edge._done(connector, served)

            do_GET = _proxy
            do_POST = _proxy

        return Handler
