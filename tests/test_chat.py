"""The chat interface in its real image, in front of two real inference servers on the real model
(Gemma 3 270M Q4_K_M), and its page driven in headless Chromium.

One stack serves the whole module, on a Docker network of its own: two inference containers
(`inf-a`, `inf-b`), the chat container, and the stand-in backend of tests/fakes/openai_backend.py
(run in the chat image) for what a real model cannot be made to do: a reply carrying an XSS
payload, a slow first token, an instance that is healthy but drops every request. The browser is
Debian's Chromium (scripts/install-browser.sh), never a downloaded one; screenshots go to
test-artifacts/chat/.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT, TEST_TAG
from tests.dockerutil import build_image, published_port, wait_for_http
from tests.support import chromium
from tests.test_chat_page import FIRST_RENDER_MS
from tests.test_inference import IMAGE as INFERENCE_IMAGE
from tests.test_inference import inference_image  # noqa: F401  (the servers' image, built once)

pytestmark = [pytest.mark.docker, pytest.mark.model]

CHAT_IMAGE = f"slimllm/chat-interface:{TEST_TAG}"
# The image's amd64 budget in .github/size-budgets.json, its one definition (1 MB = 1,000,000 bytes).
IMAGE_BUDGET_BYTES = int(
    json.loads((REPO_ROOT / ".github" / "size-budgets.json").read_text())["images"]["slimllm/chat-interface"][
        "max_mb"
    ]
    * 1_000_000
)
RUN_ID = uuid.uuid4().hex[:6]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "chat"
PROMPT = [{"role": "user", "content": "Name three colours."}]
# A request that keeps the model talking until the client leaves: greedy decoding of this prompt
# loops on to the whole budget (the gateway refuses ignore_eos, a server-side knob).
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
LONG = {"max_tokens": 400, "temperature": 0}


@dataclass
class Stack:
    chat: str  # base URLs on this host
    inf_a: str
    inf_b: str
    fake: str
    chat_container: Any
    keyed: str  # a chat with its own key, in front of inf-a


KEY = f"chat-key-{uuid.uuid4().hex}"


def name(role: str) -> str:
    return f"slimllm-chat-{RUN_ID}-{role}"


@pytest.fixture(scope="module")
def chat_image(docker_client: Any) -> Any:
    build_image("chat-interface", CHAT_IMAGE)
    return docker_client.images.get(CHAT_IMAGE)


@pytest.fixture(scope="module")
def stack(
    docker_client: Any,
    chat_image: Any,
    inference_image: Any,  # noqa: F811  (test_inference's fixture)
    default_model: Path,
) -> Iterator[Stack]:
    network = docker_client.networks.create(name("net"))
    containers: list[Any] = []

    def run(image: str, role: str, port: str, **kwargs: Any) -> str:
        container = docker_client.containers.run(
            image,
            detach=True,
            name=name(role),
            network=network.name,
            ports={port: ("127.0.0.1", None)},
            read_only=True,
            tmpfs={"/tmp": ""},
            **kwargs,
        )
        containers.append(container)
        return f"http://127.0.0.1:{published_port(container, port)}"

    try:
        inference = {
            # One thread each: two servers share this machine's cores with the tests.
            "environment": {"SLIMLLM_THREADS": "1"},
            "volumes": {str(default_model.parent): {"bind": "/models", "mode": "ro"}},
        }
        inf_a = run(INFERENCE_IMAGE, "inf-a", "8080/tcp", **inference)
        inf_b = run(INFERENCE_IMAGE, "inf-b", "8080/tcp", **inference)
        fake = run(
            CHAT_IMAGE,
            "fake",
            "8081/tcp",
            entrypoint=["python3", "/fakes/openai_backend.py", "--port", "8081", "--delay", "3"],
            volumes={str(REPO_ROOT / "tests" / "fakes"): {"bind": "/fakes", "mode": "ro"}},
        )
        a, b, f = (f"http://{name(r)}:{p}" for r, p in (("inf-a", 8080), ("inf-b", 8080), ("fake", 8081)))
        closed = f"http://{name('inf-a')}:9"  # a host that answers, on a port nobody listens on
        models = ";".join(
            [
                f"left={a}",
                f"right={b}",
                f"pool={a},{closed},{b}",
                f"flaky={f}/broken,{a}",
                f"ghost={closed}",
                f"xss={f}/xss",
                f"slow={f}/slow",
            ]
        )
        chat = run(
            CHAT_IMAGE,
            "chat",
            "8000/tcp",
            environment={
                "SLIMLLM_CHAT_MODELS": models,
                "SLIMLLM_CHAT_POLL_INTERVAL": "1",
                "SLIMLLM_CHAT_KEEPALIVE": "1",
            },
        )
        chat_container = containers[-1]
        keyed = run(
            CHAT_IMAGE,
            "keyed",
            "8000/tcp",
            environment={"SLIMLLM_CHAT_MODELS": f"left={a}", "SLIMLLM_CHAT_API_KEY": KEY},
        )
        for url in (inf_a, inf_b):
            wait_for_http(url + "/health", timeout=120)
        wait_for_http(fake + "/xss/health", timeout=30)
        wait_for_http(chat + "/health", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            statuses = {m["name"]: m["status"] for m in httpx.get(chat + "/api/models").json()["models"]}
            if (
                statuses["left"] == statuses["right"] == statuses["pool"] == "up"
                and statuses["ghost"] == "down"
            ):
                break
            assert time.monotonic() < deadline, f"the chat service never saw its backends: {statuses}"
            time.sleep(0.2)
        wait_for_http(keyed + "/health", timeout=30)
        yield Stack(chat, inf_a, inf_b, fake, chat_container, keyed)
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


def sse(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a chat-service stream; keep-alive comments as ("comment", text)."""
    event = "message"
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])
            event = "message"


def chat_stream(stack: Stack, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with httpx.stream("POST", stack.chat + "/api/chat/stream", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse(response))


def metric(url: str, name: str, labels: str = "") -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chat_requests(url: str) -> float:
    return metric(url, "slimllm_http_requests_total", '{route="/v1/chat/completions",status="200"}')


def wait_idle(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/health", timeout=5).json()["slots_processing"]:
        assert time.monotonic() < deadline, f"{url} is still generating {timeout} s after the client left"
        time.sleep(0.05)


# -- the image -------------------------------------------------------------------------------


def test_image_is_slim_non_root_and_labelled(chat_image: Any) -> None:
    attrs = chat_image.attrs
    print(f"chat-interface image: {attrs['Size'] / 1e6:.1f} MB")
    assert attrs["Size"] <= IMAGE_BUDGET_BYTES, f"{attrs['Size'] / 1e6:.1f} MB"
    config = attrs["Config"]
    assert config["User"] not in ("", "0", "root")
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert {"org.opencontainers.image.title", "org.opencontainers.image.source"} <= set(config["Labels"])


def test_healthcheck_command_passes(stack: Stack) -> None:
    test = stack.chat_container.image.attrs["Config"]["Healthcheck"]["Test"]
    result = stack.chat_container.exec_run(test[1:])
    assert result.exit_code == 0, result.output


def test_bad_configuration_stops_with_one_line(docker_client: Any, chat_image: Any) -> None:
    container = docker_client.containers.run(
        chat_image.id, detach=True, name=name("badconf"), environment={"SLIMLLM_CHAT_MODELS": "gemma"}
    )
    try:
        assert container.wait(timeout=30)["StatusCode"] == 1
        logs = container.logs().decode().strip()
    finally:
        container.remove(force=True)
    assert logs.splitlines() == ["error: model spec 'gemma': expected name=url[,url...]"]


# -- the API ---------------------------------------------------------------------------------


def test_models_show_status_without_backend_urls(stack: Stack) -> None:
    response = httpx.get(stack.chat + "/api/models")
    models = {m["name"]: m for m in response.json()["models"]}
    assert {n: m["status"] for n, m in models.items()} == {
        "left": "up",
        "right": "up",
        "pool": "up",
        "flaky": "up",
        "ghost": "down",
        "xss": "up",
        "slow": "up",
    }
    assert models["left"]["latency_ms"] > 0
    pool = [i["status"] for i in models["pool"]["instances"]]
    assert pool == ["ok", "down", "ok"] and models["pool"]["instances"][1]["reason"]
    assert "http" not in response.text and name("inf-a") not in response.text


def test_stream_multiplexes_two_real_models_and_a_down_one(stack: Stack) -> None:
    body = {"models": ["left", "right", "ghost"], "messages": PROMPT, "max_tokens": 16, "temperature": 0}
    events = chat_stream(stack, body)
    kinds = [k for k, _ in events if k != "comment"]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert events[-1][1]["models"] == {"left": "done", "right": "done", "ghost": "error"}
    texts = {}
    for model in ("left", "right"):
        mine = [(k, d) for k, d in events if k != "comment" and d.get("model") == model]
        assert mine[0][0] == "start" and mine[-1][0] == "done"
        assert {k for k, _ in mine[1:-1]} == {"token"}
        texts[model] = "".join(d["text"] for _, d in mine[1:-1])
        done = mine[-1][1]
        assert 0 < done["tokens"] <= 16 and done["ttft_ms"] > 0 and done["tok_per_s"] > 0
        assert mine[1][1]["ttft_ms"] == done["ttft_ms"]
        print(
            f"{model}: TTFT {done['ttft_ms']:.0f} ms, {done['tok_per_s']:.1f} tok/s, {done['tokens']} tokens"
        )
    (error,) = [d for k, d in events if k == "error"]
    assert error["model"] == "ghost" and error["code"] == "model_down"
    # Greedy decoding: the same answer as asking the inference server directly.
    direct = httpx.post(
        stack.inf_a + "/v1/chat/completions", json={**body, "messages": PROMPT}, timeout=120
    ).json()["choices"][0]["message"]["content"]
    assert texts["left"] == texts["right"] == direct


def test_stream_sends_keepalive_comments_while_waiting(stack: Stack) -> None:
    events = chat_stream(stack, {"models": ["slow"], "messages": PROMPT})
    first_token = next(i for i, (kind, _) in enumerate(events) if kind == "token")
    assert any(kind == "comment" for kind, _ in events[:first_token])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat/stream", {"models": ["left"]}, id="chat-stream"),
        pytest.param("/v1/chat/completions", {"model": "left", "stream": True}, id="gateway-stream"),
    ],
)
def test_client_disconnect_stops_the_backend(stack: Stack, path: str, body: dict[str, Any]) -> None:
    before = metric(stack.inf_a, "llamacpp:tokens_predicted_total")
    request = {**body, "messages": STORY, **LONG}
    with httpx.stream("POST", stack.chat + path, json=request, timeout=120) as response:
        for seen, _ in enumerate(sse(response), 1):
            if seen == 4:
                assert httpx.get(stack.inf_a + "/health").json()["slots_processing"] == 1
                break  # leaving the iterator closes the connection
    wait_idle(stack.inf_a)
    predicted = metric(stack.inf_a, "llamacpp:tokens_predicted_total")
    time.sleep(0.5)
    assert metric(stack.inf_a, "llamacpp:tokens_predicted_total") == predicted
    assert predicted - before < LONG["max_tokens"] / 2


def test_requests_spread_over_healthy_instances(stack: Stack) -> None:
    before = chat_requests(stack.inf_a), chat_requests(stack.inf_b)
    for _ in range(4):
        response = httpx.post(
            stack.chat + "/v1/chat/completions",
            json={"model": "pool", "messages": PROMPT, "max_tokens": 2},
            timeout=120,
        )
        assert response.status_code == 200, response.text
    after = chat_requests(stack.inf_a), chat_requests(stack.inf_b)
    served = after[0] - before[0], after[1] - before[1]
    assert sum(served) == 4 and min(served) >= 1, served


def test_failing_instance_is_skipped_without_an_error(stack: Stack) -> None:
    def broken_tries() -> int:
        seen = httpx.get(stack.fake + "/_requests").json()
        return sum(1 for method, path, _ in seen if method == "POST" and path.startswith("/broken"))

    before = broken_tries()
    for stream in (False, True, False, True):
        body = {"model": "flaky", "messages": PROMPT, "max_tokens": 2, "stream": stream}
        response = httpx.post(stack.chat + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert "error" not in response.text
        # The broken instance passes its health checks again within the poll interval.
        time.sleep(1.2)
    assert broken_tries() > before, "the broken instance was never tried"


def test_openai_client_through_the_gateway(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.chat + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert {m.id for m in client.models.list()} >= {"left", "right", "pool", "ghost"}
    request: dict[str, Any] = {"model": "left", "messages": PROMPT, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**request)
    text = whole.choices[0].message.content
    assert text and whole.usage is not None and whole.usage.completion_tokens <= 12
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**request, stream=True)
        if chunk.choices
    )
    assert streamed == text


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        pytest.param("nosuch", openai.NotFoundError, 404, id="unknown-model"),
        pytest.param("ghost", openai.InternalServerError, 503, id="down-model"),
    ],
)
def test_openai_client_gets_openai_errors(
    stack: Stack, model: str, error: type[Exception], status: int
) -> None:
    client = openai.OpenAI(base_url=stack.chat + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=model, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    assert caught.value.status_code == status  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "status", "message", "color"),
    [
        pytest.param("left", 200, "up", "brightgreen", id="up"),
        pytest.param("pool", 200, "up 2/3", "brightgreen", id="partly-up"),
        pytest.param("ghost", 200, "down", "red", id="down"),
        pytest.param("nosuch", 404, "unknown model", "lightgrey", id="unknown"),
    ],
)
def test_badges(stack: Stack, model: str, status: int, message: str, color: str) -> None:
    response = httpx.get(f"{stack.chat}/api/badge/{model}")
    assert response.status_code == status
    badge = response.json()
    assert badge["schemaVersion"] == 1 and badge["label"] == model and badge["color"] == color
    assert badge["message"].startswith(message)


def test_health_and_status_page(stack: Stack) -> None:
    health = httpx.get(stack.chat + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["models"]["ghost"] == "down"
    page = httpx.get(stack.chat + "/status")
    assert page.status_code == 200 and "ghost" in page.text and 'class="status down"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


# -- the page in a browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(ARTIFACTS) as launched:
        yield launched


@pytest.fixture
def dialogs() -> list[str]:
    """The messages of every alert(), confirm() or prompt() the page opened."""
    return []


@pytest.fixture
def page(browser: Any, stack: Stack, dialogs: list[str]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.goto(stack.chat + "/")
    opened.wait_for_selector('.model[data-model="ghost"]')
    yield opened
    context.close()


def choose(page: Any, names: list[str], *, max_tokens: int, temperature: float) -> None:
    for item in page.query_selector_all(".model"):
        box = item.query_selector("input")
        if not box.is_disabled():
            box.set_checked(item.get_attribute("data-model") in names)
    if page.get_attribute("#settings", "open") is None:
        page.click("#settings summary")  # the sampling settings are folded away at first
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", str(temperature))


def ask(page: Any, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#send")


def last_answer(page: Any, model: str) -> Any:
    return page.locator(f'.pane[data-model="{model}"] .msg.assistant').last


def wait_answer(page: Any, model: str, state: str, timeout: float = 60_000) -> None:
    selector = f'.pane[data-model="{model}"] .conversation > .msg.assistant:last-child[data-state="{state}"]'
    page.wait_for_selector(selector, timeout=timeout)


def test_page_streams_into_two_panes(page: Any, stack: Stack) -> None:
    choose(page, ["left", "right"], max_tokens=12, temperature=0)
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/api/chat/stream") else None)
    ask(page, "Name three colours.")
    for model in ("left", "right"):
        wait_answer(page, model, "done")
        assert last_answer(page, model).inner_text().strip()
        metrics = page.locator(f'.pane[data-model="{model}"] .metrics').inner_text()
        assert "TTFT" in metrics and "tok/s" in metrics
    answers = [last_answer(page, m).locator(".content").inner_text() for m in ("left", "right")]
    assert answers[0] == answers[1]
    page.screenshot(path=str(ARTIFACTS / "two-panes.png"), full_page=True)
    # A second prompt carries each pane's own history.
    ask(page, "And three more.")
    for model in ("left", "right"):
        wait_answer(page, model, "done")
        assert page.locator(f'.pane[data-model="{model}"] .msg.user').count() == 2
    history = json.loads(requests[-1].post_data)["history"]
    assert [m["role"] for m in history["left"]] == ["user", "assistant"]
    assert history["left"][0]["content"] == "Name three colours."
    page.screenshot(path=str(ARTIFACTS / "two-panes-history.png"), full_page=True)


def test_stop_button_stops_both_models(page: Any, stack: Stack) -> None:
    # Greedy decoding of this prompt runs on to the whole budget (the model loops), so both
    # answers are still streaming when Stop is clicked.
    choose(page, ["left", "right"], max_tokens=400, temperature=0)
    ask(page, "Write a long story about a dragon who learns to bake bread.")
    for model in ("left", "right"):
        page.wait_for_function(
            "name => document.querySelector(`.pane[data-model='${name}'] .msg.assistant:last-child`)"
            ".textContent.length > 10",
            arg=model,
        )
    page.click("#stop")
    for model in ("left", "right"):
        wait_answer(page, model, "stopped", timeout=5000)
    texts = [last_answer(page, m).inner_text() for m in ("left", "right")]
    page.screenshot(path=str(ARTIFACTS / "stopped.png"), full_page=True)
    for url in (stack.inf_a, stack.inf_b):
        wait_idle(url)
    assert [last_answer(page, m).inner_text() for m in ("left", "right")] == texts
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_down_model_is_shown_as_down(page: Any, stack: Stack) -> None:
    ghost = page.locator('.model[data-model="ghost"]')
    assert ghost.get_attribute("data-status") == "down"
    assert ghost.locator(".status").inner_text() == "down"
    assert ghost.locator("input").is_disabled()
    assert page.locator('.model[data-model="left"]').get_attribute("data-status") == "up"
    page.screenshot(path=str(ARTIFACTS / "down-model.png"), full_page=True)
    page.goto(stack.chat + "/status")
    assert page.locator("td.status.down").count() >= 2  # ghost, and pool's closed instance
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)


def test_xss_reply_renders_as_inert_text(page: Any, stack: Stack, dialogs: list[str]) -> None:
    choose(page, ["xss"], max_tokens=64, temperature=0)
    ask(page, "Say something dangerous.")
    wait_answer(page, "xss", "done")
    answer = last_answer(page, "xss")
    page.wait_for_timeout(300)  # time for any injected handler to run, were there one
    content = answer.locator(".content")
    assert content.locator("img, script, iframe, object, embed, svg, b").count() == 0
    text = content.inner_text()
    assert "<img src=x onerror=alert(1)><script>alert(2)</script>" in text
    assert '<a href="javascript:alert(4)">click</a>' in text and "<b>not bold</b>" in text
    links = content.locator("a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.com/docs"
    assert content.locator("strong").inner_text() == "bold" and content.locator("em").inner_text() == "italic"
    assert content.locator("li").count() == 2 and content.locator("pre code").count() == 1
    assert dialogs == []
    page.screenshot(path=str(ARTIFACTS / "xss-inert.png"), full_page=True)


def test_page_with_a_key_logs_in_and_chats(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(stack.keyed + "/")
        assert page.locator('form[action="/login"]').count() == 1  # the 401 page is the form
        page.fill('input[name="key"]', "not the key")
        page.click('button[type="submit"]')
        assert "not right" in page.locator("#login-error").inner_text()
        page.fill('input[name="key"]', KEY)
        page.click('button[type="submit"]')
        page.wait_for_selector('.model[data-model="left"][data-status="up"]')
        cookie = next(c for c in context.cookies() if c["name"] == "slimllm_chat_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
        # The page's script cannot read the session cookie.
        assert "slimllm_chat_session" not in page.evaluate("document.cookie")
        choose(page, ["left"], max_tokens=8, temperature=0)
        ask(page, "Name three colours.")
        wait_answer(page, "left", "done")
        assert last_answer(page, "left").inner_text().strip()
        page.screenshot(path=str(ARTIFACTS / "logged-in.png"), full_page=True)
        # Without the cookie, the API is closed.
        assert httpx.get(stack.keyed + "/api/models").status_code == 401
    finally:
        context.close()


def test_first_render_from_the_image(page: Any, stack: Stack) -> None:
    # The page as served by the image: the first paint and the page's own "ready" mark (the stored
    # conversations read and drawn), after one warm load as a returning user has it.
    timings = []
    for _ in range(3):
        page.reload()
        page.wait_for_selector('body[data-ready="true"]')
        timings.append(
            page.evaluate(
                "() => ({fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime,"
                " ready: performance.getEntriesByName('slimllm-ready')[0].startTime})"
            )
        )
    print(f"first render from the image: {timings}")
    assert min(t["ready"] for t in timings) < FIRST_RENDER_MS, timings
    assert min(t["fcp"] for t in timings if t["fcp"]) < FIRST_RENDER_MS, timings
