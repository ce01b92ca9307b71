"""Embeddings on the real image and model (issue 28): a request whose client leaves stops, and the
queue is bounded, on Gemma 3 270M with --embeddings (one container for the module). The app logic
is tested in process in tests/test_server_hardening.py; this is the same on llama.cpp.
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

from tests.test_inference import (
    Server,
    inference_image,  # noqa: F401  (the inference image, built once)
    run_server,
)

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
