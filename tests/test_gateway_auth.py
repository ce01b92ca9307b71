"""The chat gateway's own key and its per-client limits, on the app in process (real uvicorn, real
HTTP) in front of the stand-in backend of tests/fakes/openai_backend.py.

The route walk reads the app's route table, so a route added later without the key check fails
here, and so does one missing from /openapi.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from slimllm.chat.app import Protection, create_app
from slimllm.chat.auth import COOKIE, OPEN_PATHS, Keyring
from slimllm.chat.backends import Registry
from slimllm.chat.config import load_models
from slimllm.networks import parse_networks
from tests.fakes.openai_backend import serve_backend
from tests.support import serving, wait_until

KEY = "gateway-key-0123456789abcdef"


MESSAGES = [{"role": "user", "content": "x"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, list[list[Any]]]]:
    with serve_backend(delay=0.5) as running:
        yield running


@contextmanager
def gateway(spec: str, protection: Protection) -> Iterator[tuple[str, Any]]:
    registry = Registry(load_models(spec, None, {}), poll_interval=0.5, request_timeout=30)
    app = create_app(registry, keepalive=15.0, protection=protection)
    with serving(app, proxy_headers=False) as url:
        headers = {"Authorization": f"Bearer {protection.api_key}"} if protection.api_key else {}
        wait_until(
            lambda: all(
                m["status"] != "unknown"
                for m in httpx.get(url + "/api/models", headers=headers).json()["models"]
            ),
            "a health poll happened",
        )
        yield url, app


def routes_of(app: Any) -> list[tuple[str, str]]:
    """(path, method) of every route in the app's table; a mount as `<prefix>/{path}`."""
    out: list[tuple[str, str]] = []
    for route in app.routes:
        if isinstance(route, Mount):
            out.append((route.path + "/{path}", "GET"))
        elif isinstance(route, Route):
            out += [(route.path, m) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def concrete(path: str) -> str:
    return path.replace("{model}", "xss").replace("{path}", "app.js")


def test_every_route_but_health_and_login_needs_the_key(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with gateway(f"xss={base}/xss", Protection(api_key=KEY)) as (url, app):
        table = routes_of(app)
        assert len(table) >= 12
        for path, method in table:
            target = url + concrete(path)
            body = {"models": ["xss"], "model": "xss", "messages": MESSAGES, "max_tokens": 2}
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": KEY},
                {"Cookie": f"{COOKIE}=1.forged"},
                {"X-Api-Key": KEY},
            ):
                response = httpx.request(method, target, json=body, headers=headers, timeout=10)
                if path in OPEN_PATHS:
                    # Answered by the route itself (a wrong key at POST /login is its own 401 form).
                    assert "invalid_api_key" not in response.text, (method, path)
                    continue
                assert response.status_code == 401, (method, path, headers, response.status_code)
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"] == "Bearer"
            if path in OPEN_PATHS:
                continue
            authorised = httpx.request(
                method, target, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
            )
            assert authorised.status_code not in (401, 403), (method, path, authorised.text)
        # A browser asking for the page gets the login form, still with 401.
        page = httpx.get(url + "/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and '<form method="post" action="/login">' in page.text
        assert "<script" not in page.text and "style=" not in page.text


def test_openapi_lists_exactly_the_route_table(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with gateway(f"xss={base}/xss", Protection(api_key=KEY)) as (url, app):
        doc = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented == set(routes_of(app))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["security"] == ([] if path in OPEN_PATHS else [{"bearer": []}]), (method, path)


def test_login_sets_a_strict_http_only_cookie(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with gateway(f"xss={base}/xss", Protection(api_key=KEY)) as (url, _):
        form = httpx.get(url + "/login")
        assert form.status_code == 200 and 'name="key"' in form.text
        assert "default-src 'self'" in form.headers["content-security-policy"]
        wrong = httpx.post(url + "/login", data={"key": "nope"})
        assert wrong.status_code == 401 and "not right" in wrong.text and "set-cookie" not in wrong.headers
        right = httpx.post(url + "/login", data={"key": KEY})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes and "SameSite=Strict" in cookie
        assert "secure" not in attributes  # plain HTTP here; Secure over HTTPS (below)
        value = cookie.split(";")[0].split("=", 1)[1]
        assert KEY not in value
        jar = {COOKIE: value}
        assert httpx.get(url + "/api/models", cookies=jar).status_code == 200
        assert httpx.get(url + "/", cookies=jar).status_code == 200
        stream = httpx.post(
            url + "/api/chat/stream", json={"models": ["xss"], "messages": MESSAGES}, cookies=jar
        )
        assert stream.status_code == 200 and "event: final" in stream.text
        logout = httpx.post(url + "/logout", cookies=jar)
        assert logout.status_code == 303 and "Max-Age=0" in logout.headers["set-cookie"]


def test_session_cookies_expire_and_cannot_be_forged() -> None:
    keyring = Keyring(KEY, session_seconds=60)
    session = keyring.new_session(now=1000.0)
    assert keyring.session_valid(session, now=1059.0)
    assert not keyring.session_valid(session, now=1061.0)
    session_id, mac = session.split(".")
    flip = {"0": "1", "A": "B"}
    forged_id = session_id[:-1] + flip.get(session_id[-1], "A")
    assert not keyring.session_valid(f"{forged_id}.{mac}", now=1000.0)
    assert not keyring.session_valid(f"{session_id}.{mac[:-1]}{flip.get(mac[-1], '0')}", now=1000.0)
    # Another key (a restart with a new key) knows no session, and its MAC differs too.
    assert not Keyring("another-key-0123456789abcdef").session_valid(session, now=1000.0)


def test_open_gateway_says_so_in_its_log(
    fake: tuple[str, list[list[Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = fake
    with (
        caplog.at_level(logging.INFO, logger="slimllm.chat"),
        gateway(f"xss={base}/xss", Protection()) as (url, _),
    ):
        assert httpx.get(url + "/api/models").status_code == 200
        assert httpx.get(url + "/login").status_code == 303
    assert any("this chat is open" in r.getMessage() for r in caplog.records)


def test_server_knobs_are_refused_and_max_tokens_bounded(fake: tuple[str, list[list[Any]]]) -> None:
    base, seen = fake
    with gateway(f"xss={base}/xss", Protection(max_tokens_limit=64)) as (url, _):
        for knob in ({"ignore_eos": True}, {"n_predict": 9}, {"cache_prompt": False}, {"id_slot": 0}):
            response = httpx.post(
                url + "/v1/chat/completions", json={"model": "xss", "messages": MESSAGES, **knob}
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == next(iter(knob))
        too_many = httpx.post(
            url + "/v1/chat/completions", json={"model": "xss", "messages": MESSAGES, "max_tokens": 65}
        )
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"
        ok = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "xss", "messages": MESSAGES, "temperature": 0, "my_own_field": 1},
        )
        assert ok.status_code == 200, ok.text
    sent = [b for method, path, b in seen if path == "/xss/v1/chat/completions"][-1]
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0 and "my_own_field" not in sent


def test_rate_limit_per_client_behind_a_trusted_proxy(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    protection = Protection(rate_limit=3, trusted_proxies=tuple(parse_networks("127.0.0.0/8")))
    body = {"model": "xss", "messages": MESSAGES}
    with gateway(f"xss={base}/xss", protection) as (url, _):
        statuses = [
            httpx.post(url + "/v1/chat/completions", json=body, headers={"CF-Connecting-IP": "203.0.113.7"})
            for _ in range(4)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        refused = statuses[-1]
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        # Another client (by CF-Connecting-IP, since the peer is trusted) has its own allowance.
        other = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"CF-Connecting-IP": "203.0.113.8"}
        )
        assert other.status_code == 200


def test_cf_connecting_ip_is_ignored_from_an_untrusted_peer(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    protection = Protection(rate_limit=2, trusted_proxies=tuple(parse_networks("10.9.8.7")))
    body = {"model": "xss", "messages": MESSAGES}
    with gateway(f"xss={base}/xss", protection) as (url, _):
        codes = [
            httpx.post(
                url + "/v1/chat/completions", json=body, headers={"CF-Connecting-IP": f"203.0.113.{i}"}
            ).status_code
            for i in range(3)
        ]
    assert codes == [200, 200, 429]


def test_concurrent_streams_per_client(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with gateway(f"slow={base}/slow", Protection(max_streams_per_client=1, rate_limit=0)) as (url, _):
        body = {"models": ["slow"], "messages": MESSAGES}
        with httpx.stream("POST", url + "/api/chat/stream", json=body, timeout=30) as first:
            assert first.status_code == 200
            second = httpx.post(url + "/api/chat/stream", json=body, timeout=30)
            assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
            assert "in flight" in second.json()["error"]["message"]
            first.read()
        # The first stream's end gave its place back.
        assert httpx.post(url + "/api/chat/stream", json=body, timeout=30).status_code == 200


def test_body_limit_is_413_in_openai_shape(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with gateway(f"xss={base}/xss", Protection(max_body_bytes=4096)) as (url, _):
        big = json.dumps({"model": "xss", "messages": [{"role": "user", "content": "x" * 8000}]})
        declared = httpx.post(
            url + "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"}
        )
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000].encode()

        chunked = httpx.post(url + "/api/chat/stream", content=chunks())
        assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "invalid_request_error"


def test_a_browser_over_the_login_limit_gets_the_form_saying_how_long_to_wait(
    fake: tuple[str, list[list[Any]]],
) -> None:
    base, _ = fake
    protection = Protection(api_key=KEY, login_rate_limit=1)
    with gateway(f"xss={base}/xss", protection) as (url, _):
        first = httpx.post(url + "/login", data={"key": "not-the-key-but-long-enough"})
        second = httpx.post(url + "/login", data={"key": "not-the-key-but-long-enough"})
    assert first.status_code == 401
    assert second.status_code == 429 and second.headers["content-type"].startswith("text/html")
    wait = second.headers["Retry-After"]
    assert f"wait {wait} seconds" in second.text and '<form method="post" action="/login"' in second.text
