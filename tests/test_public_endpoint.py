"""A public endpoint that is safe to expose, tried on the real containers: the inference server
(one slot, the real model) and the chat gateway in front of it, with its key set.

- Each app's /openapi.json lists exactly its route table (a 405 says what is allowed), and
  schemathesis fuzzes every operation of it with every check, positive and negative cases (at
  least 500 per app): no 5xx, every response true to the document, valid data accepted, invalid
  data refused, and the server still healthy and answering afterwards.
- A 50 MB body gets 413 from both, declared or chunked, without the container's memory moving.
- 200 requests at concurrency 8 against one slot: every refusal is a 503 or 429 with Retry-After,
  and the servers' resident memory grows by at most 10 %.
- A non-streamed request whose client leaves frees its slot within a second, directly and through
  the gateway.
- Keys: 400 Authorization headers get 400, a cookie or token that is not ASCII gets 401 (no
  traceback in the log), /metrics needs the key, and a 20-character key stops either image at start.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.dockerutil import published_port, wait_for_http
from tests.test_api_guards import schemathesis_all
from tests.test_chat import (
    CHAT_IMAGE,
    chat_image,  # noqa: F401  (the chat image, built once)
)
from tests.test_inference import IMAGE as INFERENCE_IMAGE
from tests.test_inference import inference_image  # noqa: F401  (the inference image, built once)

pytestmark = [pytest.mark.docker, pytest.mark.model, pytest.mark.slow]

RUN_ID = uuid.uuid4().hex[:6]
KEY = f"chat-key-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}"}
UPSTREAM_KEY = f"upstream-key-{uuid.uuid4().hex}"
MAX_TOKENS = 4  # both apps' limit here: every generation the fuzzer asks for is short
PROMPT = [{"role": "user", "content": "Name three colours."}]
FIFTY_MB = 50 * 1024 * 1024


@dataclass
class Service:
    container: Any
    url: str
    headers: dict[str, str]


@dataclass
class Public:
    inference: Service
    chat: Service


def name(role: str) -> str:
    return f"slimllm-public-{RUN_ID}-{role}"


@pytest.fixture(scope="module")
def public(
    docker_client: Any,
    inference_image: Any,  # noqa: F811
    chat_image: Any,  # noqa: F811
    default_model: Path,
) -> Iterator[Public]:
    network = docker_client.networks.create(name("net"))
    containers: list[Any] = []

    def run(image: str, role: str, port: str, env: dict[str, str], **kwargs: Any) -> tuple[Any, str]:
        container = docker_client.containers.run(
            image,
            detach=True,
            name=name(role),
            network=network.name,
            ports={port: ("127.0.0.1", None)},
            read_only=True,
            tmpfs={"/tmp": ""},
            environment=env,
            **kwargs,
        )
        containers.append(container)
        return container, f"http://127.0.0.1:{published_port(container, port)}"

    try:
        inf, inf_url = run(
            INFERENCE_IMAGE,
            "inf",
            "8080/tcp",
            {
                "SLIMLLM_THREADS": "2",
                "SLIMLLM_SLOTS": "1",
                "SLIMLLM_QUEUE_SIZE": "3",
                "SLIMLLM_CTX_SIZE": "1024",
                "SLIMLLM_MAX_TOKENS_LIMIT": str(MAX_TOKENS),
                "SLIMLLM_API_KEY": UPSTREAM_KEY,
            },
            volumes={str(default_model.parent): {"bind": "/models", "mode": "ro"}},
        )
        chat, chat_url = run(
            CHAT_IMAGE,
            "chat",
            "8000/tcp",
            {
                "SLIMLLM_CHAT_MODELS": f"gemma=http://{name('inf')}:8080",
                "SLIMLLM_CHAT_KEY_GEMMA": UPSTREAM_KEY,
                "SLIMLLM_CHAT_API_KEY": KEY,
                "SLIMLLM_CHAT_MAX_TOKENS_LIMIT": str(MAX_TOKENS),
                "SLIMLLM_CHAT_RATE_LIMIT": "100000",  # the fuzzer is one client; the unit tests cover it
                "SLIMLLM_CHAT_MAX_STREAMS_PER_CLIENT": "2",
                "SLIMLLM_CHAT_POLL_INTERVAL": "1",
            },
        )
        wait_for_http(inf_url + "/health", timeout=120)
        wait_for_http(chat_url + "/health", timeout=30)
        deadline = time.monotonic() + 30
        while httpx.get(chat_url + "/health").json()["models"]["gemma"] != "up":
            assert time.monotonic() < deadline, "the gateway never saw its backend"
            time.sleep(0.2)
        yield Public(
            Service(inf, inf_url, {"Authorization": f"Bearer {UPSTREAM_KEY}"}), Service(chat, chat_url, AUTH)
        )
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


# -- measuring a container -------------------------------------------------------------------


def cgroup_memory(container: Any) -> int:
    """The container's memory use as its cgroup counts it (v1 or v2), in bytes."""
    container.reload()
    cid = container.id
    for path in (
        f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
        f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current",
        f"/sys/fs/cgroup/docker/{cid}/memory.current",
    ):
        try:
            return int(Path(path).read_text())
        except OSError:
            continue
    stats = container.stats(stream=False)
    return int(stats["memory_stats"]["usage"])


def rss(container: Any) -> int:
    """Resident memory of the container's server process (pid 1 inside it), in bytes."""
    container.reload()
    status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kilobytes) * 1024


class PeakSampler:
    """Samples a container's cgroup memory every 20 ms while its block runs."""

    def __init__(self, container: Any) -> None:
        self.container, self.peak, self._stop = container, 0, threading.Event()

    def __enter__(self) -> PeakSampler:
        self.before = cgroup_memory(self.container)
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, cgroup_memory(self.container))
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the documents ---------------------------------------------------------------------------


def documented(service: Service) -> dict[str, Any]:
    response = httpx.get(service.url + "/openapi.json", headers=service.headers, timeout=10)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    assert doc["openapi"] == "3.1.0"
    return doc


def test_openapi_needs_the_key(public: Public) -> None:
    for service in (public.inference, public.chat):
        assert httpx.get(service.url + "/openapi.json").status_code == 401


def test_key_attacks_on_the_images(public: Public) -> None:
    """Issue 28's attacks on keys, on the real images. (The back-off after a thousand wrong keys is
    tried in process, tests/test_keys.py: here it would hold back this module's own client.)"""
    for service in (public.inference, public.chat):
        guesses = [("Authorization", f"Bearer guess-{i:04d}") for i in range(400)]
        several = httpx.get(
            service.url + "/v1/models", headers=[*guesses, *service.headers.items()], timeout=30
        )
        assert several.status_code == 400, (service.url, several.status_code)
        for headers in (
            [(b"Cookie", "slimllm_chat_session=1.é…".encode())],
            [(b"Authorization", "Bearer é…".encode())],
        ):
            assert httpx.get(service.url + "/v1/models", headers=headers, timeout=10).status_code == 401
        assert httpx.get(service.url + "/v1/models", headers=service.headers, timeout=10).status_code == 200
        assert "Traceback" not in service.container.logs().decode(errors="replace")
    assert httpx.get(public.inference.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(public.inference.url + "/metrics", headers=public.inference.headers).status_code == 200
    assert httpx.get(public.inference.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_image_refuses_a_short_key_at_start(
    docker_client: Any,
    inference_image: Any,  # noqa: F811
    chat_image: Any,  # noqa: F811
    app: str,
) -> None:
    short = "twenty-chars-key-123"
    image, env = (
        (INFERENCE_IMAGE, {"SLIMLLM_API_KEY": short})
        if app == "inference"
        else (CHAT_IMAGE, {"SLIMLLM_CHAT_API_KEY": short, "SLIMLLM_CHAT_MODELS": "m=http://127.0.0.1:9"})
    )
    container = docker_client.containers.run(image, detach=True, environment=env, read_only=True)
    try:
        status = container.wait(timeout=60)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 1, logs
    lines = logs.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "at least 24" in lines[0], logs
    assert short not in logs


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_openapi_matches_the_route_table(public: Public, app: str) -> None:
    service: Service = getattr(public, app)
    doc = documented(service)
    # The route table, as the app itself answers: every documented (path, method) is routed
    # (not 404/405), and a method the document does not list is not (405).
    for path, operations in doc["paths"].items():
        concrete = path.replace("{model}", "gemma").replace("{path}", "app.js")
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            response = httpx.request(
                method, service.url + concrete, headers=service.headers, json={}, timeout=30
            )
            if method.lower() in operations:
                assert response.status_code not in (404, 405), (method, path, response.text)
            else:
                assert response.status_code == 405, (method, path, response.status_code)
                allowed = {m.upper() for m in operations} | ({"HEAD"} if "get" in operations else set())
                allow = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
                assert allow == allowed, (method, path, response.headers.get("allow"))  # RFC 9110
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if op.get("requestBody"):
                assert op["requestBody"]["content"], (method, path)


# -- fuzzing ---------------------------------------------------------------------------------


def fuzz(service: Service, examples: int) -> collections.Counter[str]:
    """schemathesis_all (tests/test_api_guards.py) on the container: every check, both modes."""
    return schemathesis_all(service.url, dict(service.headers), examples)


def chat_body(app: str, **extra: Any) -> dict[str, Any]:
    """A chat request for `app`: the gateway needs its model's name, the server takes none."""
    return {**({"model": "gemma"} if app == "chat" else {}), "messages": PROMPT, **extra}


def still_serving(service: Service, path: str, body: dict[str, Any]) -> None:
    assert httpx.get(service.url + "/health", timeout=10).status_code == 200
    answer = httpx.post(service.url + path, json=body, headers=service.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize(("app", "examples"), [("inference", 70), ("chat", 70)])
def test_fuzz(public: Public, app: str, examples: int) -> None:
    require(_has_schemathesis(), "schemathesis is not installed (pip install -e '.[test]')")
    service: Service = getattr(public, app)
    started = time.monotonic()
    counts = fuzz(service, examples)
    cases = sum(v for k, v in counts.items() if " " in k)
    statuses = {k: v for k, v in counts.items() if k.isdigit()}
    print(f"{app}: {cases} cases in {time.monotonic() - started:.0f} s, statuses {sorted(statuses.items())}")
    assert cases >= 500, counts
    assert statuses.get("200", 0) >= 20, statuses  # the fuzzer did reach the model
    still_serving(service, "/v1/chat/completions", chat_body(app, max_tokens=MAX_TOKENS, temperature=0))
    logs = service.container.logs().decode(errors="replace")
    assert "Traceback" not in logs, logs[-3000:]
    assert UPSTREAM_KEY not in logs and KEY not in logs


def _has_schemathesis() -> bool:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return False
    return True


# -- the body limit --------------------------------------------------------------------------


def send_raw(url: str, path: str, head: dict[str, str], body: Iterator[bytes]) -> tuple[int, bytes]:
    """A request written to the socket by hand, reading the answer as soon as it comes, even
    while the body is still being sent (as a client that streams an upload does)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if b"\r\n\r\n" in answer:
                break
            view = memoryview(chunk)
            while view:
                try:
                    sent = sock.send(view)
                    view = view[sent:]
                except BlockingIOError:
                    time.sleep(0.001)
                except (BrokenPipeError, ConnectionResetError):
                    view = view[:0]
                    break
        sock.setblocking(True)

        def complete() -> bool:
            """The headers and as much of the body as they announce have arrived."""
            head_part, sep, rest = answer.partition(b"\r\n\r\n")
            if not sep:
                return False
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head_part)
            return length is None or len(rest) >= int(length.group(1))

        while not complete():
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def fifty_mb(chunked: bool) -> Iterator[bytes]:
    piece = b'{"messages": [{"role": "user", "content": "' + b"x" * (1 << 20)
    for i in range(50):
        data = piece if i == 0 else b"x" * (1 << 20)
        yield f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
    if chunked:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("app", ["inference", "chat"])
def test_fifty_megabytes_get_413_without_memory_moving(public: Public, app: str, chunked: bool) -> None:
    service: Service = getattr(public, app)
    head = {"Content-Type": "application/json", **service.headers}
    head.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(FIFTY_MB)})
    with PeakSampler(service.container) as memory:
        status, body = send_raw(service.url, "/v1/chat/completions", head, fifty_mb(chunked))
    moved = memory.peak - memory.before
    print(f"{app} ({'chunked' if chunked else 'content-length'}): 413, memory +{moved / 1e6:.2f} MB at peak")
    assert status == 413, body[:500]
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert moved < 5_000_000, f"memory moved by {moved / 1e6:.1f} MB"
    assert httpx.get(service.url + "/health", timeout=10).status_code == 200


# -- load ------------------------------------------------------------------------------------


def load(
    service: Service, body: dict[str, Any], total: int = 200, concurrency: int = 8
) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        response = httpx.post(
            service.url + "/v1/chat/completions", json=body, headers=service.headers, timeout=120
        )
        if response.status_code in (429, 503):
            # An impatient client that still reads Retry-After: it comes back sooner than told,
            # but does not spin. A spinning client on this 2-core machine takes the CPU the
            # server's llama.cpp threads need, which measures the machine rather than the server.
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 0.25))
        return response

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(total)))


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_load_on_one_slot(public: Public, app: str) -> None:
    service: Service = getattr(public, app)
    body = chat_body(app, max_tokens=2, temperature=0)
    load(service, body, total=16)  # warm up: buffers, thread pools and caches reach their size
    containers = [public.inference.container, public.chat.container]
    before = [rss(c) for c in containers]
    started = time.monotonic()
    responses = load(service, body)
    elapsed = time.monotonic() - started
    after = [rss(c) for c in containers]
    statuses = collections.Counter(r.status_code for r in responses)
    growth = [(a - b) / b for a, b in zip(after, before, strict=True)]
    print(
        f"{app}: 200 requests at concurrency 8 in {elapsed:.0f} s: {dict(statuses)}; RSS growth "
        f"inference {growth[0]:+.1%} ({before[0] / 1e6:.0f} MB), "
        f"chat {growth[1]:+.1%} ({before[1] / 1e6:.0f} MB)"
    )
    assert statuses[200] >= 5, statuses  # the slot kept serving under the load
    for response in responses:
        if response.status_code == 200:
            continue
        assert response.status_code in (429, 503), (response.status_code, response.text)
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["code"] in ("queue_full", "rate_limit_exceeded")
    assert max(growth) <= 0.10, growth


# -- disconnects -----------------------------------------------------------------------------


def slots_busy(inference: Service) -> int:
    return int(httpx.get(inference.url + "/health", timeout=10).json()["slots_processing"])


def leave_after(
    seconds: float, url: str, body: dict[str, Any], headers: dict[str, str], left: list[float]
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, headers=headers, timeout=httpx.Timeout(30, read=seconds))
    left.append(time.time())  # httpx has closed the connection


def cancelled_at(container: Any) -> float:
    """When the server saw the client leave and cancelled the job (its log line's Docker
    timestamp), so that measuring does not depend on polling a busy machine."""
    from datetime import datetime

    for line in reversed(container.logs(timestamps=True).decode().splitlines()):
        if "the client left, generation cancelled" in line:
            stamp = line.split(" ", 1)[0]
            seconds, _, fraction = stamp.rstrip("Z").partition(".")
            whole = datetime.fromisoformat(seconds + "+00:00").timestamp()
            return whole + float("0." + (fraction or "0"))
    raise AssertionError("the server never logged the client leaving")


@pytest.mark.parametrize("app", ["inference", "chat"])
def test_non_streamed_client_that_leaves_frees_the_slot(
    docker_client: Any,
    inference_image: Any,  # noqa: F811
    chat_image: Any,  # noqa: F811
    default_model: Path,
    public: Public,
    app: str,
) -> None:
    # A long generation needs a higher limit than the shared server's: a server of its own.
    inference = docker_client.containers.run(
        INFERENCE_IMAGE,
        detach=True,
        name=name(f"long-{app}"),
        network=name("net"),
        ports={"8080/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
        environment={"SLIMLLM_THREADS": "2"},
        volumes={str(default_model.parent): {"bind": "/models", "mode": "ro"}},
    )
    containers = [inference]
    try:
        inf = Service(inference, f"http://127.0.0.1:{published_port(inference, '8080/tcp')}", {})
        wait_for_http(inf.url + "/health", timeout=120)
        target = inf
        if app == "chat":
            gateway = docker_client.containers.run(
                CHAT_IMAGE,
                detach=True,
                name=name("long-gateway"),
                network=name("net"),
                ports={"8000/tcp": ("127.0.0.1", None)},
                read_only=True,
                environment={
                    "SLIMLLM_CHAT_MODELS": f"gemma=http://{name(f'long-{app}')}:8080",
                    "SLIMLLM_CHAT_MAX_TOKENS_LIMIT": "2000",
                    "SLIMLLM_CHAT_POLL_INTERVAL": "1",
                },
            )
            containers.append(gateway)
            target = Service(gateway, f"http://127.0.0.1:{published_port(gateway, '8000/tcp')}", {})
            wait_for_http(target.url + "/health", timeout=30)
            wait_until(lambda: httpx.get(target.url + "/health").json()["models"]["gemma"] == "up", 30)
        # Greedy decoding of this prompt loops on to the whole budget (test_chat.py's Stop test).
        story = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
        body = {**chat_body(app, max_tokens=1500, temperature=0), "messages": story}
        if app == "inference":
            body["ignore_eos"] = True
        left: list[float] = []
        leaver = threading.Thread(
            target=lambda: leave_after(1.5, target.url + "/v1/chat/completions", body, target.headers, left)
        )
        leaver.start()
        wait_until(lambda: slots_busy(inf) == 1, 10)
        leaver.join(30)
        wait_until(lambda: slots_busy(inf) == 0, 3.0)
        # The job is cancelled when the server answers 499; the engine drops it at its next step.
        latency = cancelled_at(inference) - left[0]
        print(f"{app}: the server cancelled the generation {latency * 1000:.0f} ms after the client left")
        assert latency < 1.0
        predicted = metric(inf, "llamacpp:tokens_predicted_total")
        time.sleep(0.5)
        assert metric(inf, "llamacpp:tokens_predicted_total") == predicted
    finally:
        for container in containers:
            container.remove(force=True)


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.02)


def metric(service: Service, metric_name: str) -> float:
    # /metrics needs the server's key like every route but /health.
    for line in httpx.get(service.url + "/metrics", headers=service.headers, timeout=10).text.splitlines():
        if line.startswith(metric_name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {metric_name}")


# -- a chat template that loops --------------------------------------------------------------


def test_a_looping_chat_template_gets_400_within_its_budget(
    docker_client: Any,
    inference_image: Any,  # noqa: F811
    default_model: Path,
    tmp_path: Path,
) -> None:
    """The real server and model with a Jinja template that loops for hours on one message (a
    GGUF's template is code): as many such requests as the server has text threads each get 400
    within the budget, and the server answers the next request at once."""
    from tests.test_api_guards import LOOPING

    (tmp_path / "loop.jinja").write_text(LOOPING, encoding="utf-8")
    tmp_path.chmod(0o755)
    (tmp_path / "loop.jinja").chmod(0o644)
    container = docker_client.containers.run(
        INFERENCE_IMAGE,
        detach=True,
        name=name("loop"),
        ports={"8080/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
        environment={
            "SLIMLLM_THREADS": "2",
            "SLIMLLM_CTX_SIZE": "1024",
            "SLIMLLM_CHAT_TEMPLATE_FILE": "/templates/loop.jinja",
            "SLIMLLM_TEMPLATE_TIMEOUT": "1",
        },
        volumes={
            str(default_model.parent): {"bind": "/models", "mode": "ro"},
            str(tmp_path): {"bind": "/templates", "mode": "ro"},
        },
    )
    try:
        url = f"http://127.0.0.1:{published_port(container, '8080/tcp')}"
        wait_for_http(url + "/health", timeout=120)
        loop = {"messages": [{"role": "user", "content": "loop"}], "max_tokens": 4}
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(url + "/v1/chat/completions", json=loop, timeout=30), range(4))
            )
        took = time.monotonic() - started
        for answer in answers:
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "template_timeout", answer.text
        print(f"4 looping requests: 400 each, {took:.2f} s in all (budget 1 s)")
        assert took < 1 + 2.0, took
        started = time.monotonic()
        answer = httpx.post(url + "/v1/chat/completions", json={**loop, "messages": PROMPT}, timeout=30)
        assert answer.status_code == 200, answer.text
        print(f"the next request: 200 in {time.monotonic() - started:.2f} s")
        logs = container.logs().decode(errors="replace")
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        container.remove(force=True)
