"""Hostile JSON Schemas against the real inference image run with `--memory 1g`, as an outsider
who found the URL would send them: response_format on chat and completions, and tools with
`tool_choice: required`. Each gets a 400 naming the part of the schema; the server's resident
memory (its anonymous RSS: what it allocates, not the model file's pages the kernel caches) never
moves by more than 64 MB over all of them (and a generated family of nested schemas); the
container is still running, healthy and answering afterwards.

On the code before the grammar budget (e52aba9), the first case, 9.2 KB of body, OOM-killed the
container (exit 137) in 1.5 s.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.dockerutil import published_port, wait_for_http
from tests.test_grammar_limits import HOSTILE, SCHEMAS
from tests.test_inference import inference_image  # noqa: F401  (the inference image, built once)
from tests.test_public_endpoint import rss

pytestmark = [pytest.mark.docker, pytest.mark.model, pytest.mark.slow]

MOVED_AT_MOST = 64 * 1024 * 1024
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WARM = [PERSON, {"type": "string", "maxLength": 1000}, {"type": "string", "pattern": "^(a){0,1000}$"}]
MESSAGES = [{"role": "user", "content": "Give me a person as JSON."}]


def allocated(container: Any) -> int:
    """The server's anonymous resident memory (RssAnon of pid 1 in the container), in bytes: what a
    request can make it allocate. The cgroup's count also holds the page cache of the model file,
    which moves with what the kernel happens to have cached, not with the requests."""
    pid = container.attrs["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) * 1024


@dataclass
class Target:
    container: Any
    url: str
    before: int = 0
    peak: int = 0
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(
            self.url + path,
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )

    def sample(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, allocated(self.container))
                self.samples += 1
            except Exception:  # the container is gone: what the last test reports
                return
            time.sleep(0.02)


@pytest.fixture(scope="module")
def target(docker_client: Any, inference_image: Any, default_model: Path) -> Iterator[Target]:  # noqa: F811
    container = docker_client.containers.run(
        inference_image.id,
        detach=True,
        name=f"slimllm-hostile-schemas-{uuid.uuid4().hex[:6]}",
        environment={"SLIMLLM_THREADS": "2"},
        volumes={str(default_model.parent): {"bind": "/models", "mode": "ro"}},
        read_only=True,
        tmpfs={"/tmp": ""},
        mem_limit="1g",
        ports={"8080/tcp": ("127.0.0.1", None)},
    )
    try:
        target = Target(container, f"http://127.0.0.1:{published_port(container, '8080/tcp')}")
        wait_for_http(target.url + "/health", timeout=60)
        # Warm: the first requests allocate the compute buffers, and the allocator's arenas
        # (the engine thread's, the worker threads') reach what llama.cpp's grammar sampler
        # takes for one step over the whole vocabulary (tens of MB, kept by the allocator).
        for schema in WARM:
            for route, body in requests(schema):
                assert target.post(route, {**body, "max_tokens": 8}).status_code == 200
        container.reload()  # its Pid, once it runs
        target.before = target.peak = allocated(container)
        thread = threading.Thread(target=target.sample, daemon=True)
        thread.start()
        yield target
        target.stop.set()
        thread.join(5)
    finally:
        container.remove(force=True)


def requests(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The same schema on each route that turns one into a grammar."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    tool = {"type": "function", "function": {"name": "make", "parameters": schema}}
    return [
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "response_format": fmt}),
        ("/v1/completions", {"prompt": "JSON:", "max_tokens": 2, "response_format": fmt}),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "max_tokens": 2, "tools": [tool], "tool_choice": "required"},
        ),
    ]


def moved(target: Target) -> float:
    return (max(target.peak, allocated(target.container)) - target.before) / 1e6


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_schema_is_refused_naming_the_part(target: Target, case: str) -> None:
    body_sizes = []
    for route, body in requests(HOSTILE[case]):
        response = target.post(route, body)
        body_sizes.append(len(json.dumps(body)))
        assert response.status_code == 400, f"{route}: {response.status_code} {response.text[:300]}"
        error = response.json()["error"]
        assert "at " in error["message"] and "#" in error["message"], error
        assert error["param"] in ("response_format.json_schema.schema", "tools"), error
    print(f"{case}: bodies {body_sizes} B, 400 on each route, memory +{moved(target):.1f} MB so far")
    assert moved(target) * 1e6 < MOVED_AT_MOST


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS)
def test_generated_nested_schemas_are_answered_or_refused(target: Target, schema: dict[str, Any]) -> None:
    route, body = requests(schema)[0]
    response = target.post(route, {**body, "max_tokens": 1})
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        assert "#" in response.json()["error"]["message"]


def test_the_server_is_still_there_and_its_memory_did_not_move(target: Target) -> None:
    target.container.reload()
    state = target.container.attrs["State"]
    assert target.container.status == "running" and not state["OOMKilled"], {
        k: state[k] for k in ("Status", "ExitCode", "OOMKilled")
    }
    assert httpx.get(target.url + "/health", timeout=10).status_code == 200
    route, body = requests(PERSON)[0]
    answer = target.post(route, {**body, "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    print(
        f"memory: +{moved(target):.1f} MB at peak over the module ({target.samples} samples), "
        f"server RSS {rss(target.container) / 1e6:.0f} MB"
    )
    assert moved(target) * 1e6 < MOVED_AT_MOST
    assert target.samples > 10
