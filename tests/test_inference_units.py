"""Parts of the inference server that need no model: stop strings, chat templates, and the health
states that a real engine only reaches by failing (stopped worker, stalled decode, failed load),
driven through the real ASGI app with a stand-in engine object."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from slimllm import presets
from slimllm.inference.api import ENGINE_STALL_SECONDS, Settings, create_app
from slimllm.inference.chat_templates import JinjaChatTemplate, TemplateError
from slimllm.inference.engine import EngineError, Stats, _StopScanner
from slimllm.inference.mailbox import Mailbox, _write_keeping_gil


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        pytest.param([], ["a", "b"], "ab", False, id="no-stops"),
        pytest.param(["END"], ["hello E", "N", "D more"], "hello ", True, id="stop-split-across-pieces"),
        pytest.param(["END"], ["hello E", "NX"], "hello ENX", False, id="false-alarm-released"),
        pytest.param(["\n\n", "###"], ["line\n", "\nnext"], "line", True, id="first-of-several"),
        pytest.param(["stop"], ["stop"], "", True, id="stop-at-start"),
    ],
)
def test_stop_scanner(stops: list[str], pieces: list[str], emitted: str, stopped: bool) -> None:
    scanner = _StopScanner(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = scanner.feed(piece)
        out += text
        if hit:
            break
    if not hit:
        out += scanner.flush("")
    assert (out, hit) == (emitted, stopped)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_jinja_template_renders_like_transformers() -> None:
    template = JinjaChatTemplate(CHATML, "<s>", "</s>", "test")
    prompt = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_exceptions_become_client_errors() -> None:
    template = JinjaChatTemplate("{{ raise_exception('roles must alternate') }}", "", "", "test")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "x"}])


def test_template_cannot_escape_the_sandbox() -> None:
    template = JinjaChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "", "test")
    with pytest.raises(TemplateError):
        template.render([])


def test_invalid_template_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not valid Jinja"):
        JinjaChatTemplate("{% for %}", "", "", "my.jinja")


def test_presets_share_one_format() -> None:
    assert {"default", "phi", "qwen", "llama"} <= set(presets.names())
    for name in presets.names():
        values = presets.read(name)
        assert values["SLIMLLM_MODEL"], name
        assert all(key.startswith("SLIMLLM_") for key in values), name


KEY = "inference-key-0123456789abcdef"


class StandInEngine:
    """Just the attributes the health and metrics routes read."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.slots_count, self.active, self.waiting = 1, 0, 0
        self.n_vocab = 0
        self.chat = None
        self.busy = False
        self.last_progress = time.monotonic()
        self.running = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.running = False

    def alive(self) -> bool:
        return self.running


@pytest.fixture
def gated_app() -> Iterator[tuple[TestClient, threading.Event, StandInEngine, list[str]]]:
    release, engine, fatal = threading.Event(), StandInEngine(), []

    def load() -> Any:
        release.wait(10)
        return engine

    app = create_app(Settings(model_id="m", api_key=KEY), load=load, on_fatal=fatal.append)
    with TestClient(app) as client:
        yield client, release, engine, fatal
        release.set()


def wait_for_status(client: TestClient, status: int) -> Any:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == status:
            return response.json()
        time.sleep(0.01)
    raise AssertionError(f"/health never answered {status}")


def test_health_states(gated_app: tuple[TestClient, threading.Event, StandInEngine, list[str]]) -> None:
    client, release, engine, _ = gated_app
    assert client.get("/health").json() == {"status": "loading"}
    loading = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert loading.status_code == 503 and loading.headers["Retry-After"]
    release.set()
    assert wait_for_status(client, 200)["status"] == "ok"
    engine.busy, engine.last_progress = True, time.monotonic() - ENGINE_STALL_SECONDS - 1
    assert "not answering" in wait_for_status(client, 503)["reason"]
    engine.busy, engine.running = False, False
    assert "stopped" in wait_for_status(client, 503)["reason"]


def test_api_key_guards_all_but_health(
    gated_app: tuple[TestClient, threading.Event, StandInEngine, list[str]],
) -> None:
    client, release, _, _ = gated_app
    release.set()
    wait_for_status(client, 200)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_failed_load_is_fatal_and_reported() -> None:
    fatal: list[str] = []

    def load() -> Any:
        raise EngineError("llama.cpp cannot load x.gguf")

    with TestClient(create_app(Settings(model_id="m"), load=load, on_fatal=fatal.append)) as client:
        body = wait_for_status(client, 503)
        deadline = time.monotonic() + 5
        while body.get("status") != "error" and time.monotonic() < deadline:
            body = client.get("/health").json()
    assert body == {"status": "error", "reason": "llama.cpp cannot load x.gguf"}
    assert fatal == ["llama.cpp cannot load x.gguf"]


def test_mailbox_delivers_in_order_on_the_loop_thread() -> None:
    received: list[tuple[str, int]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop)
        done = asyncio.Event()
        loop_thread = threading.get_ident()

        def deliver(item: tuple[str, int]) -> None:
            assert threading.get_ident() == loop_thread
            received.append(item)
            if len(received) == 2000:
                done.set()

        def producer(name: str) -> None:
            for i in range(1000):
                mailbox.post(deliver, (name, i))

        threads = [threading.Thread(target=producer, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(done.wait(), 10)
        for thread in threads:
            thread.join()
        mailbox.close()

    asyncio.run(scenario())
    for name in "ab":
        assert [i for n, i in received if n == name] == list(range(1000))


@pytest.mark.skipif(sys.platform != "linux", reason="the C library is looked up as on Linux")
def test_mailbox_wakes_the_loop_without_releasing_the_gil() -> None:
    # The plain os.write fallback releases the GIL and costs the engine its head start on the loop.
    assert _write_keeping_gil is not None


def test_mailbox_ignores_posts_after_close() -> None:
    async def scenario() -> None:
        mailbox = Mailbox(asyncio.get_running_loop())
        mailbox.close()
        # The closed pipe's numbers go to the next file opened; a late post must not write there.
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            mailbox.post(lambda item: pytest.fail(f"delivered after close: {item}"), 1)
            await asyncio.sleep(0.05)
            with pytest.raises(BlockingIOError):
                os.read(read_fd, 1)
        finally:
            os.close(read_fd)
            os.close(write_fd)

    asyncio.run(scenario())
