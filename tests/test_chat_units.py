"""The chat interface without Docker: configuration, instance choice, and the app in process
against the stand-in backend of tests/fakes/openai_backend.py (real HTTP, real uvicorn)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.chat.app import badge_message, create_app
from slimllm.chat.backends import Model, Registry
from slimllm.chat.config import ConfigError, ModelConfig, key_env_name, load_file, load_models, parse_spec
from slimllm.cli import main
from tests.fakes.openai_backend import REPLY, serve_backend
from tests.support import free_port, serving, wait_until

# -- configuration ---------------------------------------------------------------------------


def test_spec_with_instances_and_keys() -> None:
    env = {"SLIMLLM_CHAT_KEY_GEMMA_3": "secret"}
    models = parse_spec(" gemma-3 = http://a:8080/, http://b:8080 ;\nphi=https://phi.example/api; ", env)
    assert [(m.name, m.urls) for m in models] == [
        ("gemma-3", ("http://a:8080", "http://b:8080")),
        ("phi", ("https://phi.example/api",)),
    ]
    assert models[0].api_key == "secret" and models[1].api_key is None
    assert "secret" not in repr(models[0])


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        pytest.param("gemma", "expected name=url", id="no-equals"),
        pytest.param("gemma=", "no URL given", id="no-url"),
        pytest.param("bad name=http://a", "model name 'bad name'", id="bad-name"),
        pytest.param("g=ftp://a", "http:// or https://", id="scheme"),
        pytest.param("g=http://", "with a host", id="no-host"),
        pytest.param("g=http://a:port", "not a valid URL", id="bad-port"),
        pytest.param("g=http://user:pw@a", "credentials", id="credentials"),
        pytest.param("g=http://a/v1", "without /v1", id="v1-suffix"),
        pytest.param("g=http://a?x=1", "query", id="query"),
        pytest.param("g=http://a,http://a/", "listed twice", id="same-url"),
        pytest.param("g=http://a;g=http://b", "configured twice", id="same-name"),
        pytest.param("", "no models configured", id="empty"),
    ],
)
def test_bad_spec_is_one_line(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_models(spec, None, {})
    message = str(caught.value)
    assert needle in message and "\n" not in message


def test_models_file(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "phi": {"urls": ["https://phi.example"], "model": "phi-3", "api_key_env": "PHI_KEY"},
                    "gemma": {"urls": ["http://a:8080", "http://b:8080"]},
                }
            }
        )
    )
    models = load_models("tiny=http://t:8080", path, {"PHI_KEY": "k1", key_env_name("gemma"): "k2"})
    assert [m.name for m in models] == ["tiny", "phi", "gemma"]
    assert models[1] == ModelConfig("phi", ("https://phi.example",), "k1", "phi-3")
    assert models[2].api_key == "k2"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(None, "cannot read models file", id="missing"),
        pytest.param("{", "not valid JSON", id="json"),
        pytest.param('{"gemma": {}}', 'expected {"models"', id="shape"),
        pytest.param('{"models": {"g": {"urls": []}}}', "non-empty list", id="no-urls"),
        pytest.param(
            '{"models": {"g": {"urls": ["http://a"], "key": "x"}}}', "unknown key(s) key", id="unknown-key"
        ),
        pytest.param(
            '{"models": {"g": {"urls": ["http://a"], "api_key_env": "NOPE"}}}', "NOPE is not set", id="no-key"
        ),
        pytest.param(
            '{"models": {"g": {"urls": ["http://a"], "model": 3}}}', "'model' must be", id="model-type"
        ),
    ],
)
def test_bad_models_file(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "models.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_file(path, {})
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_cli_reports_bad_config_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat-interface", "--models", "gemma"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model spec 'gemma'") and err.count("\n") == 1


def test_api_key_is_not_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat-interface", "--help"]) == 0
    out = capsys.readouterr().out
    # Keys come from the environment or a file, never from argv (where `ps` shows them).
    assert not re.search(r"--api-key(?!-file)", out) and "--api-key-file" in out
    assert "SLIMLLM_CHAT_KEY_" in out and "SLIMLLM_CHAT_API_KEY" in out


# -- instance choice -------------------------------------------------------------------------


def model_with(states: list[str]) -> Model:
    model = Model.from_config(ModelConfig("m", tuple(f"http://h{i}" for i in range(len(states)))))
    for instance, state in zip(model.instances, states, strict=True):
        instance.state = state  # type: ignore[assignment]
    return model


def test_candidates_take_turns_and_skip_down_instances() -> None:
    model = model_with(["ok", "down", "ok", "unknown", "loading"])
    firsts = [model.candidates()[0].index for _ in range(4)]
    assert firsts == [1, 3, 1, 3]
    assert [i.index for i in model.candidates()][2:] == [4, 5]
    model.instances[0].in_flight = 2
    assert [i.index for i in model.candidates()][:2] == [3, 1]


@pytest.mark.parametrize(
    ("states", "status", "message"),
    [
        pytest.param(["ok", "ok"], "up", "up · 12 ms", id="up"),
        pytest.param(["ok", "down"], "up", "up 1/2 · 12 ms", id="partly-up"),
        pytest.param(["loading", "down"], "loading", "loading", id="loading"),
        pytest.param(["down", "down"], "down", "down", id="down"),
        pytest.param(["unknown", "down"], "unknown", "unknown", id="unknown"),
    ],
)
def test_model_status_and_badge(states: list[str], status: str, message: str) -> None:
    model = model_with(states)
    for instance in model.instances:
        instance.latency_ms = 12.3
    assert model.status == status
    assert badge_message(model) == message


# -- the app in process ----------------------------------------------------------------------


@contextmanager
def serve_chat(spec: str, **options: Any) -> Iterator[str]:
    registry = Registry(load_models(spec, None, {}), poll_interval=0.5, request_timeout=30)
    with serving(create_app(registry, keepalive=options.get("keepalive", 15.0))) as url:
        # The first health poll runs at start; wait for it so tests see real statuses.
        wait_until(
            lambda: all(m["status"] != "unknown" for m in httpx.get(url + "/api/models").json()["models"]),
            "a health poll happened",
        )
        yield url


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, list[list[Any]]]]:
    with serve_backend(delay=1.2) as running:
        yield running


def stream_events(url: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    with httpx.stream("POST", url + "/api/chat/stream", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        name = None
        for line in response.iter_lines():
            if line.startswith(":"):
                events.append(("comment", line))
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name or "message", json.loads(line[len("data: ") :])))
    return events


def test_stream_fails_over_and_reports_down_model(fake: tuple[str, list[list[Any]]]) -> None:
    base, seen = fake
    dead = f"http://127.0.0.1:{free_port()}"
    spec = f"pool={base}/broken,{base}/xss;ghost={dead}"
    with serve_chat(spec) as url:
        before = sum(1 for method, path, _ in seen if method == "POST" and path.startswith("/broken"))
        for _ in range(2):  # with two healthy instances taking turns, one request starts at /broken
            events = stream_events(
                url, {"models": ["pool", "ghost"], "messages": [{"role": "user", "content": "x"}]}
            )
            kinds = [(kind, data["model"]) for kind, data in events if kind in ("start", "done", "error")]
            assert ("done", "pool") in kinds and ("error", "ghost") in kinds
            assert "".join(d["text"] for k, d in events if k == "token") == REPLY
            assert events[-1] == (
                "final",
                {"models": {"pool": "done", "ghost": "error"}, "elapsed_ms": events[-1][1]["elapsed_ms"]},
            )
            error = next(d for k, d in events if k == "error")
            assert error["code"] == "model_down" and "ghost" in error["message"]
        after = sum(1 for method, path, _ in seen if method == "POST" and path.startswith("/broken"))
        assert after > before, "the broken instance was never tried"


def test_stream_keeps_alive_while_waiting(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with serve_chat(f"slow={base}/slow", keepalive=0.5) as url:
        events = stream_events(url, {"models": ["slow"], "messages": [{"role": "user", "content": "x"}]})
    first_token = next(i for i, (kind, _) in enumerate(events) if kind == "token")
    assert any(kind == "comment" for kind, _ in events[:first_token])
    done = next(data for kind, data in events if kind == "done")
    assert done["ttft_ms"] >= 1000 and done["tok_per_s"] > 0


def test_stream_passes_sampling_and_history(fake: tuple[str, list[list[Any]]]) -> None:
    base, seen = fake
    with serve_chat(f"xss={base}/xss") as url:
        history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        stream_events(
            url,
            {
                "models": ["xss"],
                "messages": [{"role": "user", "content": "c"}],
                "history": {"xss": history},
                "max_tokens": 5,
                "temperature": 0,
            },
        )
    body = [b for method, path, b in seen if path == "/xss/v1/chat/completions"][-1]
    assert body["messages"] == [*history, {"role": "user", "content": "c"}]
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["stream"] is True
    assert body["model"] == "fake-xss"  # the backend's own id, found through its /v1/models


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        pytest.param("{", 400, "not valid JSON", id="json"),
        pytest.param({"messages": [{"role": "user", "content": "x"}]}, 400, "'models'", id="no-models"),
        pytest.param(
            {"models": ["nope"], "messages": [{"role": "user", "content": "x"}]},
            404,
            "does not exist",
            id="unknown-model",
        ),
        pytest.param(
            {"models": ["xss"], "messages": [{"role": "user", "content": "x"}], "ignore_eos": True},
            400,
            "'ignore_eos' is a server setting",
            id="server-only-knob",
        ),
        pytest.param(
            {"models": ["xss"], "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000},
            400,
            "'max_tokens'",
            id="max-tokens-over-limit",
        ),
        pytest.param({"models": ["xss"], "messages": []}, 400, "non-empty list", id="no-messages"),
        pytest.param(
            {"models": ["xss"], "messages": [{"role": "bot", "content": "x"}]}, 400, "role", id="role"
        ),
        pytest.param(
            {"models": ["xss"], "messages": [{"role": "user", "content": "x"}], "history": {"other": []}},
            400,
            "'history'",
            id="history",
        ),
    ],
)
def test_stream_rejects_bad_requests(
    fake: tuple[str, list[list[Any]]], body: Any, status: int, needle: str
) -> None:
    base, _ = fake
    with serve_chat(f"xss={base}/xss") as url:
        content = body if isinstance(body, str) else json.dumps(body)
        response = httpx.post(url + "/api/chat/stream", content=content, timeout=10)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def test_gateway_passes_loading_status_through(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with serve_chat(f"warming={base}/loading") as url:
        models = httpx.get(url + "/api/models").json()["models"]
        assert models[0]["status"] == "loading"
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "warming", "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_loading"


def test_page_and_headers(fake: tuple[str, list[list[Any]]]) -> None:
    base, _ = fake
    with serve_chat(f"xss={base}/xss") as url:
        page = httpx.get(url + "/")
        script = httpx.get(url + "/static/app.js")
        status = httpx.get(url + "/status")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert status.status_code == 200 and "xss" in status.text and base not in status.text
