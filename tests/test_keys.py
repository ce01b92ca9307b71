"""API keys under attack, on both apps in process (real uvicorn, real HTTP): the inference server
with a stand-in engine (no model), the chat gateway in front of the stand-in backend of
tests/fakes/openai_backend.py; and the real command-line entry points refusing a short key.

Each attack is the exact request of issue 28: several Authorization headers in one request, a
thousand wrong keys from one client, wrong keys from many clients, a cookie that is not ASCII, a
cookie replayed after logout, /metrics without the key, a 20-character key.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.chat.app import Protection
from slimllm.chat.auth import COOKIE
from slimllm.inference.api import Settings, create_app
from slimllm.keys import CLIENT_FREE_FAILURES, CLIENT_MAX_BACKOFF_SECONDS, GLOBAL_FREE_FAILURES, FailedKeys
from slimllm.networks import parse_networks
from tests.fakes.openai_backend import serve_backend
from tests.support import free_port, serving, wait_until
from tests.test_gateway_auth import gateway
from tests.test_inference_units import StandInEngine

KEY = "keys-test-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
# A second loopback address: another client as the servers see it.
OTHER_CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with serve_backend(delay=0.0) as (base, _):
        yield f"xss={base}/xss"


@contextmanager
def inference(api_key: str = KEY) -> Iterator[str]:
    """The inference app with a stand-in engine, under uvicorn on 127.0.0.1."""
    app = create_app(Settings(model_id="m", api_key=api_key), load=StandInEngine, on_fatal=lambda _: None)
    with serving(app) as url:
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, "the stand-in engine loaded")
        yield url


@contextmanager
def keyed_gateway(backend: str, **protection: Any) -> Iterator[str]:
    with gateway(backend, Protection(api_key=KEY, rate_limit=0, **protection)) as (url, _):
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the apps and of uvicorn (whose loggers do not propagate to the root)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


# -- one Authorization header ------------------------------------------------------------------


@pytest.mark.parametrize("app", ["inference", "gateway"])
def test_several_authorization_headers_are_400(app: str, backend: str) -> None:
    """400 guesses and the right key in one request: refused as a whole, the right key unused."""
    with inference() if app == "inference" else keyed_gateway(backend) as url:
        path = "/openapi.json"
        guesses = [("Authorization", f"Bearer guess-{i:04d}") for i in range(400)]
        for headers in (
            [*guesses, ("Authorization", f"Bearer {KEY}")],
            [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")],
        ):
            response = httpx.get(url + path, headers=headers, timeout=30)
            assert response.status_code == 400, (app, response.status_code, response.text[:200])
            assert "one Authorization header" in response.json()["error"]["message"]
        assert httpx.get(url + path, headers=bearer(KEY)).status_code == 200


# -- back-off --------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["inference", "gateway"])
def test_a_thousand_wrong_keys_from_one_client_back_off(app: str, backend: str) -> None:
    with inference() if app == "inference" else keyed_gateway(backend) as url, httpx.Client() as client:
        start = time.monotonic()
        answers = [client.get(url + "/openapi.json", headers=bearer(f"guess-{i}")) for i in range(1000)]
        elapsed = time.monotonic() - start
        codes = [r.status_code for r in answers]
        # A few typos are answered; then every attempt waits, however fast the client sends.
        assert codes[: CLIENT_FREE_FAILURES + 1] == [401] * (CLIENT_FREE_FAILURES + 1), codes[:20]
        assert set(codes[CLIENT_FREE_FAILURES + 1 :]) == {429}
        waits = [int(r.headers["Retry-After"]) for r in answers if r.status_code == 429]
        assert waits[:6] == sorted(waits[:6]) and waits[0] < waits[5], waits[:10]  # exponential
        assert waits[-1] == CLIENT_MAX_BACKOFF_SECONDS
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in answers[-5:])
        # The guesser's own right key waits too (an answer would tell it the key is right)...
        assert client.get(url + "/openapi.json", headers=bearer(KEY)).status_code == 429
        # ...but another client's is answered at once.
        with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER_CLIENT)) as other:
            start_other = time.monotonic()
            assert other.get(url + "/openapi.json", headers=bearer(KEY)).status_code == 200
            assert time.monotonic() - start_other < 1.0
        print(f"{app}: 1000 wrong keys in {elapsed:.2f} s, last Retry-After {waits[-1]} s")


def test_wrong_keys_from_many_clients_back_off_the_whole_server(backend: str) -> None:
    """Many clients (CF-Connecting-IP from a trusted proxy), each within its own allowance: the
    server-wide budget holds back everyone without a recent right key; sessions and known clients
    go on."""
    with keyed_gateway(backend, trusted_proxies=tuple(parse_networks("127.0.0.0/8"))) as url:

        def from_ip(ip: str, **kwargs: Any) -> httpx.Response:
            headers = {"CF-Connecting-IP": ip, **kwargs.pop("headers", {})}
            return httpx.get(url + "/v1/models", headers=headers, **kwargs)

        assert from_ip("198.51.100.1", headers=bearer(KEY)).status_code == 200  # a regular client
        login = httpx.post(url + "/login", data={"key": KEY}, headers={"CF-Connecting-IP": "198.51.100.2"})
        session = {COOKIE: login.cookies[COOKIE]}
        codes = [
            from_ip(f"203.0.113.{i % 250}", headers=bearer(f"guess-{i}")).status_code
            for i in range(GLOBAL_FREE_FAILURES + 1)
        ]
        assert set(codes) == {401}
        newcomer = from_ip("192.0.2.9", headers=bearer(KEY))
        assert newcomer.status_code == 429 and int(newcomer.headers["Retry-After"]) >= 1
        assert "this server" in newcomer.json()["error"]["message"]
        assert from_ip("203.0.113.200", headers=bearer("guess-again")).status_code == 429
        assert from_ip("198.51.100.1", headers=bearer(KEY)).status_code == 200
        assert from_ip("192.0.2.10", cookies=session).status_code == 200


def test_failed_logins_count_as_wrong_keys(backend: str) -> None:
    with keyed_gateway(backend, login_rate_limit=0) as url:
        codes = [httpx.post(url + "/login", data={"key": f"guess-{i}"}).status_code for i in range(20)]
        assert codes[: CLIENT_FREE_FAILURES + 1] == [401] * (CLIENT_FREE_FAILURES + 1)
        refused = httpx.post(url + "/login", data={"key": KEY})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "set-cookie" not in refused.headers and "Too many wrong keys" in refused.text
        # The same budget: a bearer key from this client waits as well.
        assert httpx.get(url + "/v1/models", headers=bearer(KEY)).status_code == 429


# -- no 500 from a credential ----------------------------------------------------------------


@pytest.mark.parametrize("app", ["inference", "gateway"])
def test_credentials_that_are_not_ascii_are_401(
    app: str, backend: str, server_log: pytest.LogCaptureFixture
) -> None:
    with inference() if app == "inference" else keyed_gateway(backend) as url:
        for headers in (
            [(b"Cookie", f"{COOKIE}=1.é…".encode())],
            [(b"Cookie", f"{COOKIE}=1.\xe9\xff".encode("latin-1"))],
            [(b"Cookie", f"{COOKIE}=é.é; other=ü".encode())],
            [(b"Authorization", "Bearer é…ü".encode())],
            [(b"Authorization", b"Bearer \xff\xfe")],
        ):
            response = httpx.get(url + "/openapi.json", headers=headers)
            assert response.status_code == 401, (headers, response.status_code, response.text)
        if app == "gateway":
            form = httpx.post(
                url + "/login",
                content="key=é…%FF%ED%A0%80".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert form.status_code == 401, form.text
    assert not [r for r in server_log.records if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in server_log.records
    ]


# -- sessions ----------------------------------------------------------------------------------


def test_logout_ends_the_session_server_side(backend: str) -> None:
    with keyed_gateway(backend) as url:
        cookies = []
        for _ in range(2):
            login = httpx.post(url + "/login", data={"key": KEY})
            assert login.status_code == 303
            cookies.append({COOKIE: login.cookies[COOKIE]})
        stolen, other = cookies
        assert httpx.get(url + "/api/models", cookies=stolen).status_code == 200
        logout = httpx.post(url + "/logout", cookies=stolen)
        assert logout.status_code == 303 and "Max-Age=0" in logout.headers["set-cookie"]
        # The old cookie, replayed as it was: refused, on every route.
        for method, path in (("GET", "/api/models"), ("GET", "/v1/models"), ("POST", "/logout")):
            replay = httpx.request(method, url + path, cookies=stolen)
            assert replay.status_code == 401, (method, path, replay.status_code)
        # The user's other session is not ended by it.
        assert httpx.get(url + "/api/models", cookies=other).status_code == 200


def test_a_new_key_ends_every_session(backend: str) -> None:
    with keyed_gateway(backend) as url:
        cookie = {COOKIE: httpx.post(url + "/login", data={"key": KEY}).cookies[COOKIE]}
        assert httpx.get(url + "/api/models", cookies=cookie).status_code == 200
    new_key = KEY[::-1]
    with gateway(backend, Protection(api_key=new_key)) as (url, _):
        assert httpx.get(url + "/api/models", cookies=cookie).status_code == 401
        assert httpx.get(url + "/api/models", headers=bearer(new_key)).status_code == 200


# -- /metrics --------------------------------------------------------------------------------


def test_metrics_needs_the_key_when_one_is_set() -> None:
    with inference() as url:
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers=bearer("wrong")).status_code == 401
        metrics = httpx.get(url + "/metrics", headers=bearer(KEY))
        assert metrics.status_code == 200 and "slimllm_http_requests_total" in metrics.text
        assert httpx.get(url + "/health").status_code == 200
    with inference(api_key="") as open_url:  # no key: the probe routes stay open
        assert httpx.get(open_url + "/metrics").status_code == 200


# -- short keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "variable"),
    [("slimllm.inference", "SLIMLLM_API_KEY"), ("slimllm.chat", "SLIMLLM_CHAT_API_KEY")],
)
@pytest.mark.parametrize("from_file", [False, True], ids=["env", "file"])
def test_a_short_key_is_refused_at_start(module: str, variable: str, from_file: bool, tmp_path: Path) -> None:
    short = "twenty-chars-key-123"
    assert len(short) == 20
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLLM_")}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    args = [sys.executable, "-m", module, "--port", str(free_port())]
    if module == "slimllm.chat":
        args += ["--models", "m=http://127.0.0.1:9"]
    else:
        args += ["--model", str(tmp_path / "absent.gguf")]
    if from_file:
        key_file = tmp_path / "key"
        key_file.write_text(short + "\n")
        args += ["--api-key-file", str(key_file)]
    else:
        env[variable] = short
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "24" in lines[0] and "20 characters" in lines[0]
    assert short not in done.stderr + done.stdout


# -- the back-off itself, on a clock of its own --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_is_capped_forgets_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    failed = FailedKeys(
        client_free=2, client_max=60.0, global_free=5, global_max=30.0, forget=600.0, clock=clock
    )
    assert [failed.attempt("a", ok=False) for _ in range(3)] == [None, None, None]  # answered: 401s
    waits = []
    for _ in range(10):  # a client that ignores Retry-After: every wrong key doubles its wait
        refused = failed.attempt("a", ok=False)
        assert refused is not None and refused.status == 429
        waits.append(int(refused.headers["Retry-After"]))
    assert waits[:6] == [2, 4, 8, 16, 32, 60] and waits[-1] == 60
    right = failed.attempt("a", ok=True)  # the right key while waiting: refused, but not counted
    assert right is not None and int(right.headers["Retry-After"]) == 60
    clock.now += 61
    assert failed.attempt("a", ok=True) is None  # its wait over, the right key is answered...
    assert failed.attempt("a", ok=False) is None  # ...and its failures are forgotten
    # The server: 5 answered failures are free (4 so far); the 6th makes every client without a
    # recent right key wait.
    for i in range(2):
        assert failed.attempt(f"b{i}", ok=False) is None
    refused = failed.attempt("newcomer", ok=True)
    assert refused is not None and "this server" in refused.message
    assert failed.attempt("a", ok=True) is None  # "a" used the right key lately
    clock.now += 601 + 30
    assert failed.attempt("newcomer", ok=True) is None  # all forgotten after a quiet while
    # Bounded: never more than MAX_CLIENTS clients remembered.
    monkeypatch.setattr("slimllm.keys.MAX_CLIENTS", 50)
    for i in range(200):
        failed.attempt(f"c{i}", ok=False)
        failed.attempt(f"d{i}", ok=True)
    assert len(failed._clients) <= 50 and len(failed._known) <= 50
