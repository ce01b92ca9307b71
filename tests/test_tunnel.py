"""What slimllm.runner.tunnel reads from cloudflared's metrics server -- registration (/ready) and the
quick tunnel's URL -- against a real local HTTP server shaped like it; then a stack with a quick
tunnel for real (the cloudflared image around the stand-in cloudflared), whose URL changes when
cloudflared restarts. The same reading code against the cloudflared image alone is in
test_sidecars.py."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.cli import main
from slimllm.runner.tunnel import (
    TunnelError,
    current_quick_tunnel_url,
    discover_tunnel_url,
    url_from_log,
    wait_until_registered,
)

# Fixtures reused as they are: the inference and chat images, and the real cloudflared image
# around the stand-in cloudflared.
from tests.test_chat import chat_image  # noqa: F401
from tests.test_inference import inference_image  # noqa: F401
from tests.test_sidecars import cloudflared_image, fake_release, target_arch  # noqa: F401

HOST = "gentle-river-test-words.trycloudflare.com"

# Log lines as cloudflared prints them (timestamps cut) when it creates a quick tunnel, terms-of-use URL
# included; the second box stands for a restart.
LOG = """\
INF Thank you for trying Cloudflare Tunnel. ... (https://www.cloudflare.com/website-terms/) ...
INF Requesting new quick Tunnel on trycloudflare.com...
INF +--------------------------------------------------------------------------------------------+
INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |
INF |  https://old-words-before-restart.trycloudflare.com                                        |
INF +--------------------------------------------------------------------------------------------+
INF |  https://gentle-river-test-words.trycloudflare.com                                         |
INF Registered tunnel connection connIndex=0 location=ams01 protocol=quic
"""


class Metrics:
    """Answers /quicktunnel with `hostname` after `not_before` requests answered 503, and /ready with
    the (status, readyConnections) in `ready`, one by one, the last one from then on."""

    def __init__(self, hostname: str, not_before: int = 0, body: str | None = None) -> None:
        self.hostname = hostname
        self.not_before = not_before
        self.body = body
        self.requests = 0
        self.ready: list[tuple[int, int]] = [(200, 1)]
        self.ready_requests = 0


@pytest.fixture
def metrics() -> Iterator[tuple[str, Metrics]]:
    state = Metrics(HOST)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/ready":
                status, count = state.ready[min(state.ready_requests, len(state.ready) - 1)]
                state.ready_requests += 1
                body = json.dumps({"status": status, "readyConnections": count, "connectorId": "c1"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            state.requests += 1
            if self.path != "/quicktunnel":
                self.send_error(404)
                return
            if state.requests <= state.not_before:
                status, body = 503, b"starting"
            else:
                status = 200
                body = (state.body or json.dumps({"hostname": state.hostname})).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A metrics URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_registration_is_waited_for(metrics: tuple[str, Metrics]) -> None:
    url, state = metrics
    state.ready = [(503, 0), (503, 0), (200, 4)]
    assert wait_until_registered(url, timeout=10, poll_interval=0.05) == 4
    assert state.ready_requests == 3


def test_no_ready_connection_is_no_registration(metrics: tuple[str, Metrics]) -> None:
    url, state = metrics
    state.ready = [(200, 0)]
    with pytest.raises(TunnelError, match=r"did not register with the edge within 1 s .*HTTP 200"):
        wait_until_registered(url, timeout=1, poll_interval=0.05)


def test_registration_of_a_silent_cloudflared_times_out(closed_port_url: str) -> None:
    with pytest.raises(TunnelError, match="ConnectError"):
        wait_until_registered(closed_port_url, timeout=0.3, poll_interval=0.05)


def test_the_current_quick_tunnel_url(metrics: tuple[str, Metrics], closed_port_url: str) -> None:
    url, state = metrics
    assert current_quick_tunnel_url(url) == f"https://{HOST}"
    state.hostname = ""
    assert current_quick_tunnel_url(url) == ""  # a named tunnel
    state.hostname = "evil.example.com"
    assert current_quick_tunnel_url(url) is None
    assert current_quick_tunnel_url(closed_port_url, timeout=0.5) is None  # restarting


def test_metrics_hostname_becomes_the_https_url(metrics: tuple[str, Metrics]) -> None:
    url, _ = metrics
    assert discover_tunnel_url(url, timeout=5) == f"https://{HOST}"


def test_metrics_are_asked_again_while_cloudflared_starts(metrics: tuple[str, Metrics]) -> None:
    url, state = metrics
    state.not_before = 2
    assert discover_tunnel_url(url, timeout=10, poll_interval=0.05) == f"https://{HOST}"
    assert state.requests == 3


def test_log_is_the_fallback_and_its_newest_url_wins(closed_port_url: str) -> None:
    assert discover_tunnel_url(closed_port_url, timeout=0.3, log_text=LOG) == f"https://{HOST}"


def test_url_from_log_ignores_other_hosts() -> None:
    assert url_from_log("see https://www.cloudflare.com/website-terms/ and trycloudflare.com") is None
    assert url_from_log("https://x.trycloudflare.com.example.org/") is None
    assert url_from_log("visit https://A-b.trycloudflare.com.") == "https://a-b.trycloudflare.com"


def test_no_answer_and_no_log_fails_after_the_timeout(closed_port_url: str) -> None:
    start = time.monotonic()
    with pytest.raises(TunnelError, match=r"gave no hostname within 1 s \(ConnectError.*no log was given"):
        discover_tunnel_url(closed_port_url, timeout=1, poll_interval=0.1)
    assert 0.8 <= time.monotonic() - start < 5


def test_named_tunnel_fails_at_once(metrics: tuple[str, Metrics]) -> None:
    url, state = metrics
    state.hostname = ""
    start = time.monotonic()
    with pytest.raises(TunnelError, match="runs a named tunnel"):
        discover_tunnel_url(url, timeout=30, log_text="no url here")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps({"hostname": "evil.example.com"}), id="foreign-host"),
        pytest.param("not json", id="not-json"),
        pytest.param(json.dumps(["hostname"]), id="not-an-object"),
    ],
)
def test_answers_that_are_not_a_quick_tunnel_are_rejected(metrics: tuple[str, Metrics], body: str) -> None:
    url, state = metrics
    state.body = body
    with pytest.raises(TunnelError):
        discover_tunnel_url(url, timeout=0.3, poll_interval=0.1)


def test_cli_prints_the_url(metrics: tuple[str, Metrics], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = metrics
    assert main(["tunnel", "url", "--metrics", url, "--timeout", "5"]) == 0
    assert capsys.readouterr().out == f"https://{HOST}\n"


def test_cli_reads_the_log_from_env_and_stdin(
    closed_port_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_file = tmp_path / "cloudflared.log"
    log_file.write_text(LOG)
    monkeypatch.setenv("SLIMLLM_TUNNEL_METRICS", closed_port_url)
    monkeypatch.setenv("SLIMLLM_TUNNEL_TIMEOUT", "0.2")
    monkeypatch.setenv("SLIMLLM_TUNNEL_LOG_FILE", str(log_file))
    assert main(["tunnel", "url"]) == 0
    assert capsys.readouterr().out == f"https://{HOST}\n"

    monkeypatch.delenv("SLIMLLM_TUNNEL_LOG_FILE")
    monkeypatch.setattr("sys.stdin", io.StringIO(LOG))
    assert main(["tunnel", "url", "--log-file", "-"]) == 0
    assert capsys.readouterr().out == f"https://{HOST}\n"


def test_cli_error_is_one_line(closed_port_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tunnel", "url", "--metrics", closed_port_url, "--timeout", "0.2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err


def test_cli_sets_the_step_output_on_github(
    metrics: tuple[str, Metrics], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = metrics
    output = tmp_path / "github_output"
    output.touch()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert main(["tunnel", "url", "--metrics", url]) == 0
    assert f"\nhttps://{HOST}\n" in output.read_text()
    assert output.read_text().startswith("tunnel-url<<")


# --- a stack with a quick tunnel, for real -----------------------------------------------------


def env_file_value(path: Path, name: str) -> str:
    """The last value GITHUB_ENV (heredoc entries) gives `name`."""
    values = re.findall(rf"(?m)^{name}<<(\S+)\n(.*)\n\1$", path.read_text())
    assert values, path.read_text()
    return str(values[-1][1])


@pytest.mark.docker
@pytest.mark.timeout(1500)
def test_a_quick_tunnel_stack_registers_warns_and_publishes_a_new_url(
    docker_client: Any,
    request: pytest.FixtureRequest,
    default_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inference = request.getfixturevalue("inference_image")
    chat = request.getfixturevalue("chat_image")
    tunnel_image = request.getfixturevalue("cloudflared_image")
    files = {name: tmp_path / name.lower() for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
    for name, path in files.items():
        path.touch()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("TUNNEL_TOKEN", raising=False)
    monkeypatch.delenv("SLIMLLM_CHAT_API_KEY", raising=False)
    monkeypatch.setenv("SLIMLLM_TUNNEL_URL", "")  # what the export sets is taken back afterwards
    name = f"qt-{uuid.uuid4().hex[:6]}"
    port = 20000 + uuid.uuid4().int % 5000
    argv = [
        "stack", "up", "--name", name, "--models", "default", "--models-dir", str(default_model.parent),
        "--inference-image", inference.id, "--chat", "--chat-image", chat.id, "--tunnel",
        "--public", "true", "--cloudflared-image", tunnel_image, "--no-monitor", "--port", str(port),
        "--chat-port", str(port + 1), "--threads", "1",
    ]  # fmt: skip
    try:
        assert main(argv) == 0
        up_log = capsys.readouterr().out
        first = re.search(r"(?m)^tunnel-url<<(\S+)\n(.*)\n\1$", files["GITHUB_OUTPUT"].read_text())
        assert first and re.fullmatch(r"https://test-double-[0-9a-f]{8}\.trycloudflare\.com", first[2])
        assert env_file_value(files["GITHUB_ENV"], "SLIMLLM_TUNNEL_URL") == first[2]
        assert f"{name}-tunnel: registered with the edge" in up_log
        # Published without a chat key, as --public asked: said in the log (an annotation) and in
        # the summary.
        assert "::warning::the chat is published through the tunnel without a key" in up_log
        assert "> **Warning:** the chat is published through the tunnel without a key" in (
            files["GITHUB_STEP_SUMMARY"].read_text()
        )
        # The quick tunnel's origin is the chat by its alias: what the stand-in's edge side answers.
        tunnel = docker_client.containers.get(f"{name}-tunnel")
        address = tunnel.attrs["NetworkSettings"]["Networks"][f"{name}-net"]["IPAddress"]
        assert httpx.get(f"http://{address}:8080/health", timeout=10).status_code == 200

        # cloudflared restarts (a crash, an update): a new quick tunnel, a new hostname.
        tunnel.restart(timeout=10)
        assert main(["stack", "watch", "--name", name, "--duration", "8s", "--interval", "1"]) == 0
        watch_log = capsys.readouterr().out
        new = env_file_value(files["GITHUB_ENV"], "SLIMLLM_TUNNEL_URL")
        assert new != first[2] and re.fullmatch(r"https://test-double-[0-9a-f]{8}\.trycloudflare\.com", new)
        assert (
            f"::warning::the quick tunnel has a new public URL, {new}; {first[2]} no longer serves"
            in watch_log
        )
        summary = files["GITHUB_STEP_SUMMARY"].read_text()
        assert f"### The public URL changed\n\n- Public: {new} (was {first[2]})" in summary
        assert re.search(
            rf"(?m)^tunnel-url<<(\S+)\n{re.escape(new)}\n\1$", files["GITHUB_OUTPUT"].read_text()
        )
    finally:
        main(["stack", "down", "--name", name])
