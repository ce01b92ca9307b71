"""Both apps' servers against a hostile client (issue 28): the `Host` check (DNS rebinding), the
header-read and keep-alive timeouts (slowloris), embeddings cancelled on disconnect and bounded,
and no 500 from any header. In process: real uvicorn with the servers' own connection settings
(slimllm.httpserver.server_options), real sockets. The inference app runs on a stand-in engine
(no model here) whose embed() takes a known time, so that cancelling and queueing can be counted.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimllm.chat.app import Protection
from slimllm.chat.app import create_app as create_chat
from slimllm.chat.backends import Registry
from slimllm.chat.config import load_models
from slimllm.clitypes import ClientSettings
from slimllm.hosts import AllowedHosts, HostCheck
from slimllm.httpserver import server_options
from slimllm.inference.api import Settings
from slimllm.inference.api import create_app as create_inference
from tests.support import serving as shared_serving

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1
EMBED_SECONDS = 0.2


class FakeEngine:
    """What the inference app asks of its engine for /v1/models, /tokenize and /v1/embeddings."""

    embeddings = True
    n_embd, n_vocab, batch_size, ctx_per_slot, n_ctx_train = 4, 100, 64, 512, 512
    slots_count, active, waiting, busy, last_progress, queue_size = 1, 0, 0, False, 0.0, 1
    n_params, size_bytes, general_name, architecture = 1, 1, "fake", "fake"
    model_path = Path("fake.gguf")
    chat = SimpleNamespace(description="fake")
    bos_token = eos_token = tool_format = pooling_name = None
    stats = SimpleNamespace(requests_finished=0)

    def __init__(self) -> None:
        self.embedded = 0  # inputs embedded, across requests

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool:
        return True

    def _token_text(self, token: int) -> str:
        return "ab"

    def completion_prompt(self, text: str) -> list[int]:
        return [ord(c) % self.n_vocab for c in text][: self.batch_size] or [1]

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return self.completion_prompt(text)

    def embed(self, tokens: list[int]) -> list[float]:
        time.sleep(EMBED_SECONDS)
        self.embedded += 1
        return [0.5, 0.5, 0.5, 0.5]


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """`app` on real uvicorn with the servers' connection settings; yields the port."""
    options = server_options(header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT)
    with shared_serving(app, **options) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def inference(engine: FakeEngine) -> Iterator[int]:
    app = create_inference(
        Settings(
            model_id="fake",
            allowed_hosts=AllowedHosts.parse("api.example.org"),
            # This test's client is the host (loopback), a local client as in the stacks: only the
            # server's own queues bound it (the client limits are tests/test_clients.py's).
            clients=ClientSettings(local_clients=(ipaddress.ip_network("127.0.0.0/8"),)),
        ),
        load=lambda: engine,  # type: ignore[arg-type,return-value]
        on_fatal=lambda message: None,
    )
    with serving(app) as port:
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
            assert time.monotonic() < deadline, "the stand-in engine did not load"
            time.sleep(0.05)
        yield port


@pytest.fixture(scope="module")
def chat(inference: int) -> Iterator[int]:
    registry = Registry(
        load_models(f"fake=http://127.0.0.1:{inference}", None, {}), poll_interval=0.5, request_timeout=30
    )
    app = create_chat(
        registry,
        protection=Protection(
            rate_limit=0, max_streams_per_client=0, allowed_hosts=AllowedHosts.parse("chat.example.org")
        ),
    )
    with serving(app) as port:
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/api/models").json()["models"][0]["status"] != "up":
            assert time.monotonic() < deadline, "the gateway never saw its backend up"
            time.sleep(0.05)
        yield port


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send `request` as it is; everything the server answers until it closes or `timeout`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        chunks = []
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except OSError:  # a timeout, or the server closed on a head it refused before reading it all
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def get(path: str, host: bytes, *extra: bytes) -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: " + host, *extra, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- Host (DNS rebinding) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8080", True),
        ("[::1]:8000", True),
        ("localhost:8000", True),
        ("LOCALHOST", True),
        ("app.localhost", True),
        ("inference:8080", True),  # a stack's service name: the gateway, the monitor
        ("host.docker.internal:8080", True),
        ("quiet-lake-1234.trycloudflare.com", True),  # a quick tunnel: cloudflared passes it on
        ("api.example.org", True),  # configured
        ("API.example.org.:443", True),
        ("attacker.example", False),
        ("attacker.example:8080", False),
        ("api.example.org.attacker.example", False),
        ("trycloudflare.com.attacker.example", False),
        ("example.org", False),
        ("127.0.0.1:80:80", False),
        ("[::1", False),
        ("a b", False),
        ("é.example", False),
        ("", False),
    ],
)
def test_allowed_hosts(host: str, allowed: bool) -> None:
    assert AllowedHosts.parse("api.example.org").allows(host.encode("utf-8")) is allowed


def test_allowed_hosts_setting() -> None:
    hosts = AllowedHosts.parse("chat.example.org, *.corp.example  *")
    assert hosts.names == {"chat.example.org"} and hosts.domains == {"corp.example"} and hosts.any
    assert AllowedHosts.parse("*.corp.example").allows(b"x.y.corp.example")
    assert not AllowedHosts.parse("*.corp.example").allows(b"corp.example.evil")
    assert AllowedHosts.parse("*").allows(b"attacker.example")
    with pytest.raises(ValueError, match="not a host name"):
        AllowedHosts.parse("http://chat.example.org/")


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_a_dns_rebinding_request_gets_400(app: str, request: pytest.FixtureRequest) -> None:
    """A page on attacker.example whose name now resolves to 127.0.0.1: the browser connects to
    the published port and sends the attacker's name as Host. Refused, with no route run."""
    port: int = request.getfixturevalue(app)
    path = "/v1/models"
    answer = raw(port, get(path, b"attacker.example:%d" % port))
    assert status_of(answer) == 400, answer[:300]
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "invalid_host"
    # Two Host headers, one of them allowed: still refused.
    twice = get(path, b"127.0.0.1", b"Host: attacker.example")
    assert status_of(raw(port, twice)) == 400
    # Every legitimate name still works: the loopback, a service name, a quick tunnel's and the
    # configured one (the chat's backend is reached as 127.0.0.1 here).
    named = "api.example.org" if app == "inference" else "chat.example.org"
    for host in (
        b"127.0.0.1:%d" % port,
        b"localhost",
        b"inference:8080",
        b"x.trycloudflare.com",
        named.encode(),
    ):
        assert status_of(raw(port, get(path, host))) == 200, host

    # /health answers the images' own health checks (Host 127.0.0.1), and rebinding there too is refused.
    assert status_of(raw(port, get("/health", b"127.0.0.1:%d" % port))) == 200
    assert status_of(raw(port, get("/health", b"attacker.example"))) == 400


@pytest.mark.parametrize("tunnel", [True, False], ids=["from-the-tunnel", "from-anyone-else"])
def test_a_named_tunnels_hostname_needs_no_setting(engine: FakeEngine, tunnel: bool) -> None:
    """What the tunnel's connector forwards was routed to this tunnel by the edge for one of its own
    hostnames: a named tunnel's public name is served without listing it; from any other peer the
    same name is a rebinding attempt."""
    here = ipaddress.ip_network("127.0.0.1/32") if tunnel else ipaddress.ip_network("10.255.255.1/32")
    app = create_inference(
        Settings(
            model_id="fake",
            clients=ClientSettings(trusted_proxies=(here,), local_clients=(here,)),
        ),
        load=lambda: engine,  # type: ignore[arg-type,return-value]
        on_fatal=lambda message: None,
    )
    with serving(app) as port:
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
            assert time.monotonic() < deadline, "the stand-in engine did not load"
            time.sleep(0.05)
        answer = raw(port, get("/v1/models", b"chat.example.org"))
    assert status_of(answer) == (200 if tunnel else 400), answer[:300]


def test_both_commands_run_the_checks_and_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings reach the real servers: the chat command's uvicorn config, and the inference
    server's (run_server), each with its Host check in the app."""
    from slimllm.chat.server import chat_interface
    from slimllm.inference import server as inference_server

    seen: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: seen.append(self.config))
    env = {
        "SLIMLLM_CHAT_ALLOWED_HOSTS": "chat.example.org",
        "SLIMLLM_CHAT_HEADER_TIMEOUT": "3",
        "SLIMLLM_CHAT_IDLE_TIMEOUT": "7",
    }
    result = CliRunner().invoke(chat_interface, ["--models", "m=http://127.0.0.1:9"], env=env)
    assert result.exit_code == 0, result.output
    inference_server.run_server(
        load_model=lambda: Path("unused"),
        model_id="m",
        api_key=None,
        host="127.0.0.1",
        port=0,
        engine_options={},
        request_timeout=10,
        shutdown_grace=1,
        log_level="warning",
        allowed_hosts=AllowedHosts.parse("api.example.org"),
        header_timeout=3,
        idle_timeout=7,
    )
    for config in seen:
        assert config.timeout_keep_alive == 7
        assert isinstance(config.http, type) and config.http.__name__ == "HeadTimeoutProtocol"
        app: Any = config.app
        layers = [m.cls for m in app.user_middleware]
        assert HostCheck in layers
    assert len(seen) == 2


# -- slowloris ---------------------------------------------------------------------------------


def drip(sock: socket.socket, data: bytes, pause: float = 0.1) -> bytes:
    """Send `data` a byte every `pause` seconds until the server answers or closes; then all it
    sends until it closes."""
    answer = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(pause)
            answer += sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer:
            break
    sock.settimeout(5)
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except OSError:
        pass
    return answer


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_slow_headers_are_cut(app: str, request: pytest.FixtureRequest) -> None:
    """A client sends its request line and then a header a byte at a time, forever: the server
    answers 408 and closes the connection HEADER_TIMEOUT after it opened."""
    port: int = request.getfixturevalue(app)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = drip(sock, b"X-Slow: " + b"a" * 100)
        took = time.monotonic() - opened
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + 1.5, took


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_silent_and_idle_connections_are_closed(app: str, request: pytest.FixtureRequest) -> None:
    port: int = request.getfixturevalue(app)
    # Opened, nothing sent: closed (no answer) after the header timeout.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        opened = time.monotonic()
        assert sock.recv(4096) == b""
        assert HEADER_TIMEOUT <= time.monotonic() - opened < HEADER_TIMEOUT + 1.5
    # One request answered, then idle on keep-alive: closed after the idle timeout; and a client
    # that drips its next request's head after the answer is cut like any slow head.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not _complete(answer):
            answer += sock.recv(65536)
        answered = time.monotonic()
        assert status_of(answer) == 200
        rest = drip(sock, b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100)
        took = time.monotonic() - answered
        assert rest.startswith(b"HTTP/1.1 408") and took < HEADER_TIMEOUT + 1.5, (rest[:100], took)


# -- embeddings ----------------------------------------------------------------------------------


EMBED = b"/v1/embeddings"


def post(port: int, path: bytes, body: dict[str, Any], host: bytes = b"127.0.0.1") -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
    ) + data


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_embeddings_stop_when_the_client_leaves(
    app: str, engine: FakeEngine, request: pytest.FixtureRequest
) -> None:
    """Twenty inputs (4 s of work); the client leaves after 0.5 s: the server embeds only the
    inputs it had started by then (through the gateway too, which closes its backend request)."""
    port: int = request.getfixturevalue(app)
    before = engine.embedded
    body = {"model": "fake", "input": ["some text"] * 20}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(post(port, EMBED, body))
        time.sleep(0.5)
    time.sleep(20 * EMBED_SECONDS * 0.5)
    left = engine.embedded
    time.sleep(1.0)
    assert engine.embedded == left, "embedding went on after the client left"
    assert engine.embedded - before <= 5, engine.embedded - before


def test_embeddings_have_a_bounded_queue(inference: int, engine: FakeEngine) -> None:
    """One request at work and --queue-size (1 here) waiting; the next gets 503 + Retry-After,
    and the ones let in all finish."""
    body = {"input": ["x"] * 5}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(f"http://127.0.0.1:{inference}/v1/embeddings", json=body, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503, 503, 503], codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    # Nothing is left counted once they are done.
    assert httpx.post(f"http://127.0.0.1:{inference}/v1/embeddings", json=body, timeout=30).status_code == 200


# -- no 500 from a header ------------------------------------------------------------------------

HEADER_NAMES = [
    b"host", b"content-length", b"content-type", b"accept", b"accept-encoding", b"accept-language",
    b"transfer-encoding", b"connection", b"expect", b"origin", b"referer", b"user-agent", b"range",
    b"if-none-match", b"x-forwarded-for", b"x-forwarded-proto", b"cf-connecting-ip", b"forwarded",
    b"te", b"upgrade", b"x-request-id", b"content-encoding",
]  # fmt: skip
# Authorization and Cookie are the auth's own (tests/test_gateway_auth.py).
VALUES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"-1", b"1e3", b"99999999999999999999", b" 0", b"application/json; charset=latin-1",
                     b"application/json; charset=nope", b"text/plain", b"*/*;q=x", b"chunked",
                     b"gzip", b"100-continue", b"h2c", b"websocket", b"\xff\xfe", b"\xe9"]),
    st.integers(0, 70_000).map(lambda n: b"a" * n),
)  # fmt: skip
HEADERS = st.lists(st.tuples(st.sampled_from(HEADER_NAMES), VALUES), max_size=6)
ROUTES = {
    "inference": [
        (b"GET", b"/v1/models"), (b"GET", b"/health"), (b"GET", b"/openapi.json"),
        (b"POST", b"/tokenize"), (b"POST", b"/v1/embeddings"), (b"POST", b"/v1/chat/completions"),
    ],
    "chat": [
        (b"GET", b"/"), (b"GET", b"/health"), (b"GET", b"/v1/models"), (b"GET", b"/api/models"),
        (b"GET", b"/status"), (b"POST", b"/login"), (b"POST", b"/v1/embeddings"),
        (b"POST", b"/v1/chat/completions"), (b"POST", b"/api/chat/stream"), (b"GET", b"/static/app.js"),
    ],
}  # fmt: skip
BODIES = {
    b"/tokenize": {"content": "hi"},
    b"/v1/embeddings": {"model": "fake", "input": "hi"},
    b"/v1/chat/completions": {
        "model": "nope",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    },
    b"/api/chat/stream": {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_no_header_gets_a_500(app: str, request: pytest.FixtureRequest) -> None:
    port: int = request.getfixturevalue(app)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=st.sampled_from(ROUTES[app]), headers=HEADERS)
    def check(route: tuple[bytes, bytes], headers: list[tuple[bytes, bytes]]) -> None:
        method, path = route
        body = json.dumps(BODIES.get(path, {})).encode() if method == b"POST" else b""
        lines = [method + b" " + path + b" HTTP/1.1"]
        if not any(name == b"host" for name, _ in headers):
            lines.append(b"Host: 127.0.0.1")
        if not any(name in (b"content-length", b"transfer-encoding") for name, _ in headers):
            lines.append(b"Content-Length: %d" % len(body))
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"Connection: close")
        answer = raw(port, b"\r\n".join(lines) + b"\r\n\r\n" + body, timeout=5)
        if answer:  # a malformed head may be dropped; what matters is never a 5xx
            assert status_of(answer) < 500, (lines, answer[:500])

    check()
