"""`slimllm report health` against real HTTP servers on 127.0.0.1: up, slow, down, unavailable, flaky."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from slimllm.cli import main
from slimllm.reports import ReportError
from slimllm.reports.health import (
    Prober,
    ProbeSettings,
    Target,
    build_targets,
    parse_target,
    render_health_markdown,
)

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
UPDATE = os.environ.get("SLIMLLM_UPDATE_FIXTURES") == "1"


class Handler(BaseHTTPRequestHandler):
    """The first path segment picks the behaviour, so one server plays every kind of service."""

    hits: ClassVar[Counter[str]] = Counter()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        kind, _, rest = self.path.lstrip("/").partition("/")
        Handler.hits[kind] += 1
        if kind == "slow":
            time.sleep(1.5)
        if kind == "busy" or (kind == "flaky" and Handler.hits[kind] <= 2):
            self._send(503, {"error": "loading model"})
        elif kind == "gone":
            self._send(404, {"error": "not found"})
        elif rest == "v1/models" and kind in ("up", "chat"):
            self._send(200, {"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})
        elif rest == "health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        kind, _, rest = self.path.lstrip("/").partition("/")
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if kind == "up" and rest == "v1/completions":
            time.sleep(0.1)
            tokens = request["max_tokens"]
            self._send(200, {"choices": [{"text": "hi"}], "usage": {"completion_tokens": tokens}})
        elif kind == "chat" and rest == "v1/chat/completions" and request["messages"]:
            time.sleep(0.1)
            self._send(200, {"choices": [], "usage": {"completion_tokens": 8}})
        else:
            self._send(404, {"error": "not found"})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    Handler.hits.clear()


FAST = ProbeSettings(timeout=0.5, attempts=3, backoff=0.01, max_wait=5)


@pytest.mark.parametrize(
    ("kind", "up", "status", "attempts", "error"),
    [
        pytest.param("up", True, 200, 1, None, id="up"),
        pytest.param("slow", False, None, 3, "timed out after 3 attempts", id="slow-times-out"),
        pytest.param("busy", False, 503, 3, "HTTP 503 after 3 attempts", id="503-is-retried"),
        pytest.param("flaky", True, 200, 3, None, id="503-then-up"),
        pytest.param("gone", False, 404, 1, "HTTP 404 after 1 attempt", id="404-is-not-retried"),
    ],
)
def test_probe(
    server: str, kind: str, up: bool, status: int | None, attempts: int, error: str | None
) -> None:
    result = Prober(FAST).probe(Target(kind, f"{server}/{kind}"))
    assert (result["up"], result["status"], result["attempts"], result["error"]) == (
        up,
        status,
        attempts,
        error,
    )
    assert (result["latency_ms"] is not None) == (status is not None)


def test_down_when_nothing_listens(closed_port: str) -> None:
    result = Prober(FAST).probe(Target("down", closed_port))
    assert not result["up"] and result["attempts"] == 3
    assert result["error"] == "connection refused after 3 attempts"


def test_model_and_tokens_per_second(server: str) -> None:
    settings = ProbeSettings(timeout=5, tokens_per_second=True)
    result = Prober(settings).probe(Target("api", f"{server}/up"))
    assert result["model"] == "tiny-model"
    assert result["completion_tokens"] == 16
    # 16 tokens from a server that takes 0.1 s: at most 160 tokens/s, and not absurdly less.
    assert result["tokens_per_second"] is not None and 40 < result["tokens_per_second"] <= 160
    chat = Prober(settings).probe(Target("chat", f"{server}/chat"))
    assert chat["completion_tokens"] == 8 and chat["error"] is None


def test_backoff_doubles_and_stops_at_the_deadline(server: str) -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    settings = ProbeSettings(timeout=1, attempts=10, backoff=1, max_wait=10)
    result = Prober(settings, sleep=sleep, clock=lambda: now[0]).probe(Target("busy", f"{server}/busy"))
    # 1 + 2 + 4 = 7 s waited; the next wait (8 s) would end past the 10 s budget, so probing stops.
    assert waits == [1, 2, 4] and result["attempts"] == 4 and not result["up"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("api=http://127.0.0.1:8080/", ("api", "http://127.0.0.1:8080"), id="named"),
        pytest.param(
            "http://127.0.0.1:8080/llm", ("127.0.0.1:8080", "http://127.0.0.1:8080/llm"), id="bare-url"
        ),
    ],
)
def test_parse_target(spec: str, expected: tuple[str, str]) -> None:
    assert parse_target(spec) == expected


@pytest.mark.parametrize(
    ("specs", "required", "message"),
    [
        pytest.param(["api=ftp://x"], [], "bad URL for target", id="not-http"),
        pytest.param(["api=not a url"], [], "bad URL for target", id="garbage"),
        pytest.param([], [], "no targets", id="none"),
        pytest.param(["a=http://x", "a=http://y"], [], "given twice: a", id="duplicate"),
        pytest.param(["a=http://x"], ["b"], "unknown target: b", id="unknown-required"),
    ],
)
def test_bad_targets(specs: list[str], required: list[str], message: str) -> None:
    with pytest.raises(ReportError, match=message):
        build_targets(specs, required)


def test_required_defaults_to_all() -> None:
    assert [t.required for t in build_targets(["a=http://x", "b=http://y"], [])] == [True, True]
    assert [t.required for t in build_targets(["a=http://x", "b=http://y"], ["b"])] == [False, True]


def test_summary_markdown_matches_fixture() -> None:
    report = json.loads((FIXTURES / "health_report.json").read_text())
    text = render_health_markdown(report)
    path = FIXTURES / "health_summary.md"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text()


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    files = {"summary": tmp_path / "summary.md", "outputs": tmp_path / "outputs.txt"}
    for path in files.values():
        path.write_text("")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(files["summary"]))
    monkeypatch.setenv("GITHUB_OUTPUT", str(files["outputs"]))
    return files


def test_required_target_down_fails_the_step(
    server: str, closed_port: str, runner: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "health.json"
    args = ["report", "health", "--target", f"api={server}/up", "--target", f"db={closed_port}"]
    args += ["--target", f"extra={server}/busy", "--required", "api", "--required", "db"]
    args += [
        "--attempts",
        "2",
        "--backoff",
        "0",
        "--timeout",
        "2",
        "--tokens-per-second",
        "--json-out",
        str(report),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == "error: required service down: db"
    assert "::error title=Service health::db" in captured.out
    assert "::warning title=Service health::extra" in captured.out
    data = json.loads(report.read_text())
    assert data["down"] == ["db", "extra"] and data["required_down"] == ["db"]
    summary = runner["summary"].read_text()
    assert "| ✅ | api |" in summary and "| ❌ | db |" in summary and "| ⚠️ | extra |" in summary
    assert "<code>tiny-model</code>" in summary
    assert "required-down<<" in runner["outputs"].read_text()


def test_optional_target_down_passes(server: str, runner: dict[str, Path]) -> None:
    args = ["report", "health", "--target", f"api={server}/up", "--target", f"extra={server}/gone"]
    assert main([*args, "--required", "api"]) == 0


def test_bad_url_on_the_command_line(runner: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "health", "--target", "api=localhost:8080"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bad URL for target 'api=localhost:8080'") and err.count("\n") == 1
