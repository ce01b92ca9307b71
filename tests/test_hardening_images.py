"""Issue 28's server hardening on the real images, where it lives in them: embeddings on Gemma 3
270M with --embeddings (one inference container for the module) stop when the client leaves and
have a bounded queue, and the inference image refuses a rebinding Host; the chat image (its own
entrypoint, uvicorn and health check) refuses one too and cuts a slow request head. The app logic
is tested in process in tests/test_server_hardening.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_TAG
from tests.dockerutil import build_image, published_port, wait_for_http
from tests.support import free_port
from tests.test_inference import (
    Server,
    inference_image,  # noqa: F401  (the inference image, built once)
    run_server,
)
from tests.test_server_hardening import drip, get, raw, status_of

# Many short inputs make a long request: each input is one llama.cpp call (about 1.3 s on two
# busy cores, 4 s more per request; measured with SLIMLLM_THREADS=2 under load).
TEXT = "The quick brown fox jumps over the lazy dog."
INPUTS = 12


@pytest.fixture(scope="module")
def embedder(docker_client: Any, inference_image: Any, default_model: Path) -> Iterator[Server]:  # noqa: F811
    env = {"SLIMLLM_EMBEDDINGS": "1", "SLIMLLM_QUEUE_SIZE": "1", "SLIMLLM_THREADS": "2"}
    with run_server(docker_client, inference_image, default_model.parent, env) as server:
        yield server


def embed(server: Server, inputs: int) -> httpx.Response:
    return httpx.post(server.url + "/v1/embeddings", json={"input": [TEXT] * inputs}, timeout=600)


def cpu_seconds(server: Server) -> float:
    """CPU time the container has used so far (its cgroup's count)."""
    stats = server.container.stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def test_an_embeddings_request_stops_when_its_client_leaves(embedder: Server) -> None:
    """A long request (INPUTS inputs) whose client leaves after 0.5 s: once the input then in
    llama.cpp is done, the server is idle, instead of embedding the rest for nobody."""
    started = time.monotonic()
    assert embed(embedder, INPUTS).status_code == 200
    whole = time.monotonic() - started
    started = time.monotonic()
    assert embed(embedder, 1).status_code == 200
    one = time.monotonic() - started
    assert whole > 3 * one, (whole, one)  # long enough to tell the two apart

    body = httpx.Request("POST", "/", json={"input": [TEXT] * INPUTS}).read()
    with socket.create_connection(("127.0.0.1", httpx.URL(embedder.url).port)) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.5)
    left = time.monotonic()
    time.sleep(2 * one)  # the input at work when the client left ends
    before = cpu_seconds(embedder)
    time.sleep(3)
    busy = (cpu_seconds(embedder) - before) / 3
    print(
        f"whole {whole:.2f} s, one input {one:.2f} s; {time.monotonic() - left:.1f} s after the client left"
    )
    print(f"the server used {busy:.2f} CPUs")
    assert busy < 0.1, f"the server went on embedding for nobody ({busy:.2f} CPUs busy)"
    # And it still answers.
    assert embed(embedder, 1).status_code == 200


def test_the_embeddings_queue_is_bounded(embedder: Server) -> None:
    """One request at work and SLIMLLM_QUEUE_SIZE (1) waiting: the others get 503 + Retry-After."""
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(embed(embedder, 2))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503, 503, 503], codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["error"]["code"] == "queue_full"


def test_the_image_refuses_a_rebinding_host(embedder: Server) -> None:
    assert embedder.get("/v1/models", headers={"Host": "attacker.example"}).status_code == 400
    assert embedder.get("/v1/models", headers={"Host": "inference:8080"}).status_code == 200


# -- the image -----------------------------------------------------------------------------------


def test_the_chat_image_checks_host_and_cuts_slow_headers(docker_client: Any) -> None:
    """The chat container as the stacks run it (its own entrypoint, uvicorn and health check): a
    rebinding Host gets 400, a slow head 408 after SLIMLLM_CHAT_HEADER_TIMEOUT, and the image's
    health check (Host 127.0.0.1) still passes."""
    image = f"slimllm/chat-interface:{TEST_TAG}"
    build_image("chat-interface", image)
    container = docker_client.containers.run(
        image,
        detach=True,
        name=f"slimllm-hardening-{TEST_TAG}-{free_port()}",
        environment={
            "SLIMLLM_CHAT_MODELS": "m=http://127.0.0.1:9",
            "SLIMLLM_CHAT_HEADER_TIMEOUT": "2",
            "SLIMLLM_CHAT_ALLOWED_HOSTS": "chat.example.org",
        },
        ports={"8000/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
    )
    try:
        port = int(published_port(container, "8000/tcp"))
        wait_for_http(f"http://127.0.0.1:{port}/health")
        assert status_of(raw(port, get("/health", b"attacker.example"))) == 400
        assert status_of(raw(port, get("/health", b"chat.example.org"))) == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            opened = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer = drip(sock, b"X-Slow: " + b"a" * 100)
            took = time.monotonic() - opened
        assert answer.startswith(b"HTTP/1.1 408") and 2 <= took < 4, (answer[:100], took)
        deadline = time.monotonic() + 60
        while (
            health := docker_client.api.inspect_container(container.id)["State"]["Health"]["Status"]
        ) != "healthy":
            assert health != "unhealthy" and time.monotonic() < deadline, health
            time.sleep(1)
    finally:
        container.remove(force=True)
