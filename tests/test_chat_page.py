"""The chat page in a real browser (Playwright driving Debian's Chromium), against the chat app in
process (real uvicorn, real HTTP) and an echo backend: each model answers with the user's last
message, so a test decides what the "model" says -- markdown, or an attack. Every feature is driven
by clicks and keys; the XSS suite sends its payloads through model output, model names,
conversation titles and imported files. Screenshots go to test-artifacts/chat-page/.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.chat.app import STATIC, Protection, create_app
from slimllm.chat.backends import Registry
from slimllm.chat.config import load_models
from tests.conftest import require
from tests.support import chromium, free_port, serving

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "chat-page"
AXE = REPO_ROOT / "tests" / "vendor" / "axe.min.js"
KEY = "page-test-key-0123456789"
MODELS = ("alpha", "beta", "gamma", "delta", "epsilon")
PAGE_BUDGET_GZIP = 150 * 1024  # the page's JavaScript + CSS, gzipped (issue 27: slim stays slim)
FIRST_RENDER_MS = 300
SLOW = "[slow]"  # a prompt starting with this streams one chunk every 40 ms


# -- the echo backend ------------------------------------------------------------------------


def echo_handler(seen: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.endswith("/health"):
                self._json(200, {"status": "ok"})
            else:
                self._json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            name = self.path.strip("/").split("/")[0]
            seen.append({**body, "route": name})
            # The reply: the last user message, with {model} replaced by this backend's name.
            last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            slow = last.startswith(SLOW)
            reply = last.replace("{model}", name)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            size = 4 if slow else 8
            try:
                for i in range(0, len(reply), size):
                    chunk = {"choices": [{"index": 0, "delta": {"content": reply[i : i + size]}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.04 if slow else 0.002)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:
                pass  # the gateway went away (Stop)

    return Handler


@contextmanager
def serve(spec: str, protection: Protection) -> Iterator[str]:
    registry = Registry(load_models(spec, None, {}), poll_interval=0.5, request_timeout=30)
    with serving(create_app(registry, keepalive=15.0, protection=protection)) as url:
        yield url


class Site:
    def __init__(self, url: str, keyed: str, seen: list[dict[str, Any]]) -> None:
        self.url, self.keyed, self.seen = url, keyed, seen


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    seen: list[dict[str, Any]] = []
    backend = ThreadingHTTPServer(("127.0.0.1", 0), echo_handler(seen))
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{backend.server_address[1]}"
    spec = ";".join(f"{m}={base}/{m}" for m in MODELS) + f";ghost=http://127.0.0.1:{free_port()}"
    generous = Protection(rate_limit=100_000, max_streams_per_client=8)
    keyed = Protection(api_key=KEY, rate_limit=100_000, max_streams_per_client=8)
    try:
        with serve(spec, generous) as url, serve(spec, keyed) as keyed_url:
            deadline = time.monotonic() + 10
            while httpx.get(url + "/api/models").json()["models"][0]["status"] != "up":
                assert time.monotonic() < deadline, "no health poll happened"
                time.sleep(0.05)
            yield Site(url, keyed_url, seen)
    finally:
        backend.shutdown()
        backend.server_close()


# -- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(ARTIFACTS) as launched:
        yield launched


class Tab:
    """One browser context (its own IndexedDB) with the page open, and what it must never see."""

    def __init__(self, browser: Any, site: Site, **context: Any) -> None:
        self.context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **context})
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.site = site

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.site.url + path)
        self.page.wait_for_selector('body[data-ready="true"]')
        self.page.wait_for_selector('.model[data-model="alpha"][data-status="up"]')
        return self.page

    def pick(self, *names: str) -> None:
        for name in MODELS:
            box = self.page.locator(f'.model[data-model="{name}"] input')
            if box.is_checked() != (name in names):
                box.click()

    def send(self, text: str, state: str = "done") -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")
        self.wait(state)

    def wait(self, state: str = "done") -> None:
        self.page.wait_for_function(
            "s => { const a = [...document.querySelectorAll("
            "'.pane .conversation > .msg.assistant:last-child')];"
            " return a.length > 0 && a.every(n => n.dataset.state === s); }",
            arg=state,
        )

    def answer(self, model: str) -> Any:
        return self.page.locator(f'.pane[data-model="{model}"] .msg.assistant').last

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        assert self.errors == [], self.errors
        self.context.close()


@pytest.fixture
def tab(browser: Any, site: Site) -> Iterator[Tab]:
    opened = Tab(browser, site)
    opened.open()
    yield opened
    opened.close()


# -- habits ----------------------------------------------------------------------------------


def test_enter_sends_and_shift_enter_is_a_new_line(tab: Tab) -> None:
    page = tab.page
    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.locator(".msg.user").count() == 0  # Shift+Enter did not send
    page.keyboard.press("Enter")
    tab.wait()
    assert page.locator(".msg.user .content").inner_text() == "first line\nsecond line"
    assert tab.answer("alpha").locator(".content").inner_text().strip() == "first line\nsecond line"
    assert page.input_value("#prompt") == ""
    # tokens/s and TTFT per answer, and in the column's header.
    metrics = tab.answer("alpha").locator(".answer-metrics").inner_text()
    assert "TTFT" in metrics and "tok/s" in metrics
    assert "TTFT" in page.locator('.pane[data-model="alpha"] .metrics').inner_text()


def test_stop_button_and_escape_stop_the_answer(tab: Tab) -> None:
    page = tab.page
    long = SLOW + " " + "word " * 200
    for how in ("click", "escape"):
        page.fill("#prompt", long)
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "() => { const n = document.querySelector('.pane .msg.assistant:last-child .content');"
            " return n && n.textContent.length > 20; }"
        )
        assert page.is_enabled("#stop") and not page.is_enabled("#send")
        if how == "click":
            page.click("#stop")
        else:
            page.keyboard.press("Escape")
        tab.wait("stopped")
        text = tab.answer("alpha").locator(".content").inner_text()
        assert 0 < len(text) < len(long)
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        assert "stopped" in tab.answer("alpha").inner_text()


def test_shortcuts_are_listed_and_work(tab: Tab) -> None:
    page = tab.page
    page.click("#show-shortcuts")
    dialog = page.locator("#shortcuts")
    assert dialog.is_visible()
    listed = dialog.inner_text()
    for key in ("Enter", "Shift", "Esc", "Ctrl"):
        assert key in listed
    page.click("#close-shortcuts")
    assert not dialog.is_visible()
    page.keyboard.press("Control+/")
    assert dialog.is_visible()
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    tab.send("a chat to leave")
    page.keyboard.press("Control+Shift+O")
    assert page.locator(".msg.user").count() == 0 and page.locator("#title").inner_text() == "New chat"
    page.keyboard.press("Control+K")
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.press("Control+Shift+S")
    assert not page.locator("#sidebar").is_visible()
    page.keyboard.press("Control+Shift+S")
    assert page.locator("#sidebar").is_visible()


def test_autoscroll_follows_until_the_reader_scrolls_up(browser: Any, site: Site) -> None:
    tab = Tab(browser, site, viewport={"width": 1000, "height": 500})
    page = tab.open()
    try:
        page.fill("#prompt", SLOW + "\n\n" + "\n\n".join(f"paragraph {i}" for i in range(60)))
        page.press("#prompt", "Enter")
        page.wait_for_function("() => document.documentElement.scrollHeight > 2 * innerHeight")
        page.wait_for_timeout(300)
        at_bottom = "() => innerHeight + scrollY >= document.documentElement.scrollHeight - 60"
        assert page.evaluate(at_bottom), "the page does not follow the answer"
        # The answer is in the page, not in a scroll box of its own.
        pane_box = page.locator(".pane .conversation").first
        assert pane_box.evaluate("n => n.scrollHeight <= n.clientHeight + 1")
        page.mouse.move(500, 250)
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(200)
        held = page.evaluate("scrollY")
        page.wait_for_timeout(800)  # still streaming
        assert tab.answer("alpha").get_attribute("data-state") == "streaming"
        assert page.evaluate("scrollY") == held, "autoscroll pulled the reader back down"
        page.click("#stop")
        tab.wait("stopped")
    finally:
        tab.close()


# -- conversations ---------------------------------------------------------------------------


def titles(page: Any) -> list[str]:
    return list(page.locator("#conversations .open").all_inner_texts())


def test_conversations_survive_reload_and_can_be_renamed_searched_deleted(tab: Tab) -> None:
    page = tab.page
    tab.send("the first conversation about apples")
    page.click("#new-chat")
    tab.send("the second conversation about pears")
    assert titles(page) == ["the second conversation about pears", "the first conversation about apples"]
    page.reload()
    page.wait_for_selector('body[data-ready="true"]')
    assert titles(page) == ["the second conversation about pears", "the first conversation about apples"]
    assert "pears" in page.locator(".msg.user").inner_text()
    page.click("#conversations li:nth-child(2) .open")
    assert "apples" in page.locator(".msg.user").inner_text()
    assert "apples" in tab.answer("alpha").inner_text()
    # Rename by keyboard.
    page.click("#conversations li:nth-child(1) .rename")
    page.fill(".rename-input", "Fruit: pears")
    page.press(".rename-input", "Enter")
    assert "Fruit: pears" in titles(page)
    # Search by title and by content.
    page.fill("#search", "apples")
    assert titles(page) == ["the first conversation about apples"]
    page.fill("#search", "fruit")
    assert titles(page) == ["Fruit: pears"]
    page.fill("#search", "")
    # Delete takes two clicks.
    page.click('#conversations li:has-text("Fruit: pears") .delete')
    assert len(titles(page)) == 2
    page.click('#conversations li:has-text("Fruit: pears") .delete')
    page.wait_for_function("() => document.querySelectorAll('#conversations .open').length === 1")
    page.reload()
    page.wait_for_selector('body[data-ready="true"]')
    assert titles(page) == ["the first conversation about apples"]


def test_export_and_import_round_trip(browser: Any, site: Site, tmp_path: Path) -> None:
    first = Tab(browser, site)
    page = first.open()
    first.pick("alpha", "beta")
    first.send("| a | b |\n|---|---|\n| 1 | 2 |")
    with page.expect_download() as download:
        page.click("#export")
    path = tmp_path / "export.json"
    download.value.save_as(path)
    first.close()
    data = json.loads(path.read_text())
    assert data["format"] == "slimllm-chat" and len(data["conversations"]) == 1
    assert {a["model"] for a in data["conversations"][0]["turns"][0]["answers"]} == {"alpha", "beta"}

    second = Tab(browser, site)  # a fresh browser profile: nothing stored
    page = second.open()
    assert titles(page) == []
    page.set_input_files("#import", str(path))
    page.wait_for_function("() => document.querySelectorAll('#conversations .open').length === 1")
    assert "imported 1 conversation" in page.inner_text("#notice")
    page.click("#conversations .open")
    assert page.locator('.pane[data-model="beta"] .content table td').all_inner_texts() == ["1", "2"]
    second.close()


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json {", "not JSON"),
        ('{"conversations": []}', "not a slimllm-chat export"),
        ('{"format": "slimllm-chat", "version": 2, "conversations": []}', "version 1"),
        (
            '{"format": "slimllm-chat", "version": 1, "conversations": [{"turns": "x"}]}',
            "turns must be a list",
        ),
        (
            '{"format": "slimllm-chat", "version": 1, "conversations": [{"turns": [{"user": 5}]}]}',
            "user must be a string",
        ),
        (
            '{"format": "slimllm-chat", "version": 1, "conversations": [{"title": "ok", "turns": []},'
            ' {"turns": [{"user": "u", "answers": [{"model": "m", "text": "t", "state": "<b>"}]}]}]}',
            "state must be done, stopped or error",
        ),
    ],
)
def test_import_refuses_a_bad_file_whole(tab: Tab, tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    tab.page.set_input_files("#import", str(path))
    tab.page.wait_for_function(
        "() => document.querySelector('#notice').textContent.includes('import failed')"
    )
    assert error in tab.page.inner_text("#notice")
    assert titles(tab.page) == []


def test_settings_belong_to_their_conversation(tab: Tab) -> None:
    page = tab.page
    page.click("#settings summary")
    page.fill("#system", "You answer in French.")
    page.fill("#temperature", "0.2")
    page.fill("#top-p", "0.9")
    page.fill("#max-tokens", "77")
    tab.pick("alpha", "beta")
    before = len(tab.site.seen)
    tab.send("bonjour")
    sent = [s for s in tab.site.seen[before:]]
    assert {s["route"] for s in sent} == {"alpha", "beta"}
    for request in sent:
        assert request["messages"][0] == {"role": "system", "content": "You answer in French."}
        assert request["temperature"] == 0.2 and request["top_p"] == 0.9 and request["max_tokens"] == 77
    page.click("#new-chat")
    page.fill("#system", "")
    page.fill("#temperature", "1.1")
    tab.pick("gamma")
    tab.send("hello")
    page.reload()
    page.wait_for_selector('body[data-ready="true"]')
    page.wait_for_selector('.pane[data-model="gamma"]')
    assert page.input_value("#temperature") == "1.1" and page.input_value("#system") == ""
    page.click('#conversations li:has-text("bonjour") .open')
    assert page.input_value("#system") == "You answer in French."
    assert page.input_value("#temperature") == "0.2" and page.input_value("#max-tokens") == "77"
    assert page.locator(".pane").evaluate_all("ns => ns.map(n => n.dataset.model)") == ["alpha", "beta"]


def test_edit_a_sent_message_and_regenerate_replace_what_follows(tab: Tab) -> None:
    page = tab.page
    tab.send("one")
    tab.send("two")
    tab.send("three")
    page.locator('.msg.user[data-turn="1"] .edit').click()
    assert page.input_value("#prompt") == "two" and page.is_visible("#editing")
    page.fill("#prompt", "two, edited")
    before = len(tab.site.seen)
    page.press("#prompt", "Enter")
    tab.wait()
    assert page.locator(".msg.user .content").all_inner_texts() == ["one", "two, edited"]
    assert [m["content"] for m in tab.site.seen[before]["messages"]] == ["one", "one", "two, edited"]
    before = len(tab.site.seen)
    page.click("#regenerate")
    tab.wait()
    assert page.locator(".msg.user .content").all_inner_texts() == ["one", "two, edited"]
    assert [m["content"] for m in tab.site.seen[before]["messages"]] == ["one", "one", "two, edited"]
    page.reload()
    page.wait_for_selector('body[data-ready="true"]')
    page.wait_for_selector(".msg.user")
    assert page.locator(".msg.user .content").all_inner_texts() == ["one", "two, edited"]


# -- rendering -------------------------------------------------------------------------------

MARKDOWN = """## Results

| model | score |
|:------|------:|
| alpha | 0.91 |
| beta  | 0.87 |

- [x] tables
- [ ] math

```python
def greet(name):
    return f"hello {name}"  # a comment
```

See [the docs](https://example.com/docs), ~~old~~ and https://example.org/auto.
"""


def test_markdown_tables_tasks_code_and_links(browser: Any, site: Site) -> None:
    tab = Tab(browser, site, permissions=["clipboard-read", "clipboard-write"])
    page = tab.open()
    try:
        tab.send(MARKDOWN)
        content = tab.answer("alpha").locator(".content")
        assert content.locator("h2").inner_text() == "Results"
        assert content.locator("table th").all_inner_texts() == ["model", "score"]
        assert content.locator("table td.align-right").first.inner_text() == "0.91"
        boxes = content.locator("li.task input[type=checkbox]")
        assert boxes.count() == 2 and boxes.nth(0).is_checked() and not boxes.nth(1).is_checked()
        assert content.locator("s").inner_text() == "old"
        code = content.locator(".code-block code")
        assert code.locator(".hljs-keyword").first.inner_text() == "def"
        assert code.locator(".hljs-string").count() >= 1 and code.locator(".hljs-comment").count() == 1
        assert content.locator(".code-bar").inner_text().startswith("python")
        links = content.locator("a")
        assert links.evaluate_all("ns => ns.map(n => [n.href, n.rel, n.target])") == [
            ["https://example.com/docs", "noopener noreferrer nofollow", "_blank"],
            ["https://example.org/auto", "noopener noreferrer nofollow", "_blank"],
        ]
        content.locator(".code-block .copy").click()
        page.wait_for_function("() => document.querySelector('.code-block .copy').textContent === 'Copied'")
        assert page.evaluate("navigator.clipboard.readText()") == (
            'def greet(name):\n    return f"hello {name}"  # a comment'
        )
        tab.shot("markdown")
    finally:
        tab.close()


def test_reasoning_is_a_folded_block_of_text(tab: Tab) -> None:
    # The gateway does not send reasoning yet (issue: reasoning_content); the page is ready for a
    # `reasoning` field in token events. The stream is played by the browser's router here.
    events = [
        ("start", {"model": "alpha"}),
        ("token", {"model": "alpha", "text": "", "reasoning": PAYLOADS[1] + " let me think", "ttft_ms": 5.0}),
        ("token", {"model": "alpha", "text": "The **answer**."}),
        ("done", {"model": "alpha", "ttft_ms": 5.0, "tok_per_s": 40.0, "tokens": 2}),
        ("final", {"models": {"alpha": "done"}, "elapsed_ms": 9.0}),
    ]
    body = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)
    tab.page.route(
        "**/api/chat/stream",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    tab.send("think first")
    block = tab.answer("alpha").locator("details.reasoning")
    assert block.get_attribute("open") is None and block.locator("summary").inner_text() == "Reasoning"
    assert block.locator(".reasoning-text").text_content() == PAYLOADS[1] + " let me think"
    assert tab.answer("alpha").locator(".content strong").inner_text() == "answer"
    assert_inert(tab)
    tab.page.reload()
    tab.page.wait_for_selector(".msg.assistant details.reasoning")


# -- side by side ----------------------------------------------------------------------------


def test_four_models_side_by_side_and_continue_with_one(tab: Tab) -> None:
    page = tab.page
    tab.pick("alpha", "beta", "gamma", "delta")
    # At most four columns: the fifth model cannot be picked.
    assert page.locator('.model[data-model="epsilon"] input').is_disabled()
    tab.send("I am {model}.")
    boxes = [
        page.locator(f'.pane[data-model="{m}"]').bounding_box() for m in ("alpha", "beta", "gamma", "delta")
    ]
    assert len({round(b["y"]) for b in boxes}) == 1 and sorted(b["x"] for b in boxes) == [
        b["x"] for b in boxes
    ]
    for model in ("alpha", "beta", "gamma", "delta"):
        assert tab.answer(model).locator(".content").inner_text().strip() == f"I am {model}."
        assert page.locator(f'.pane[data-model="{model}"] .status').first.inner_text().startswith("up")
    # Continue all (the default): each model goes on with its own answer.
    before = len(tab.site.seen)
    tab.send("again")
    sent = {s["route"]: s["messages"] for s in tab.site.seen[before:]}
    assert sent["gamma"][1] == {"role": "assistant", "content": "I am gamma."}
    # Continue with beta's answer: every model goes on with it.
    tab.answer("beta").locator(".keep").click()
    assert tab.answer("beta").get_attribute("data-kept") == "yes"
    assert tab.answer("alpha").get_attribute("data-kept") == "no"
    assert tab.answer("beta").locator(".keep").get_attribute("aria-pressed") == "true"
    before = len(tab.site.seen)
    tab.send("and now?")
    sent = {s["route"]: s["messages"] for s in tab.site.seen[before:]}
    for model in ("alpha", "beta", "gamma", "delta"):
        assert sent[model][3] == {"role": "assistant", "content": "again"}
    # The choice is kept with the conversation.
    page.reload()
    page.wait_for_selector('.pane[data-model="beta"] .msg.assistant[data-kept="yes"]')
    assert (
        page.locator('.pane[data-model="alpha"] .msg.assistant[data-turn="1"]').get_attribute("data-kept")
        == "no"
    )


def test_columns_stack_on_a_phone_and_nothing_overflows(browser: Any, site: Site) -> None:
    tab = Tab(browser, site, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = tab.open()
    try:
        assert not page.locator("#sidebar").is_visible()  # a drawer on a phone
        tab.pick("alpha", "beta")
        tab.send(MARKDOWN + "\n" + "x" * 300)
        a = page.locator('.pane[data-model="alpha"]').bounding_box()
        b = page.locator('.pane[data-model="beta"]').bounding_box()
        assert a["x"] == b["x"] and b["y"] > a["y"] and a["width"] <= 375
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.click("#toggle-sidebar")
        assert page.locator("#sidebar").is_visible()
        assert page.locator("#sidebar").bounding_box()["width"] <= 375
        page.click("#conversations .open")
        assert not page.locator("#sidebar").is_visible()
    finally:
        tab.close()


def test_dark_mode_follows_the_system(browser: Any, site: Site) -> None:
    def background(scheme: str) -> str:
        tab = Tab(browser, site, color_scheme=scheme)
        try:
            return str(tab.open().evaluate("getComputedStyle(document.documentElement).backgroundColor"))
        finally:
            tab.close()

    def luminance(rgb: str) -> float:
        r, g, b = (int(x) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
        return (r + g + b) / 3

    assert luminance(background("dark")) < 60 < 200 < luminance(background("light"))


# -- security --------------------------------------------------------------------------------

# Each payload sets window.__xss (or opens a dialog) if it ever runs as script or markup.
PAYLOADS = [
    "<script>window.__xss=1</script>",
    "<img src=x onerror=window.__xss=2>",
    "<svg onload=window.__xss=3>",
    "<iframe src=javascript:window.parent.__xss=4></iframe>",
    '<a href="javascript:window.__xss=5">click</a>',
    "[md link](javascript:window.__xss=6)",
    "[entity link](&#106;avascript:window.__xss=7)",
    "[vb](vbscript:msgbox(8))",
    "![img](javascript:window.__xss=9)",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '"><img src=x onerror=window.__xss=11>',
    "'><svg/onload=window.__xss=12>",
    "<details open ontoggle=window.__xss=13>",
    "<body onload=window.__xss=14>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__xss=15>",
    "<object data=javascript:window.__xss=16>",
    "<embed src=javascript:window.__xss=17>",
    "<input autofocus onfocus=window.__xss=18>",
    "```js\n</code></pre><img src=x onerror=window.__xss=19>\n```",
    "```<img src=x onerror=window.__xss=20>\ncode\n```",
    "| a |\n|---|\n| <img src=x onerror=window.__xss=21> |",
    "- [x] <img src=x onerror=window.__xss=22>",
    "<style>body{display:none}</style>",
    '[x](https://example.com/"onmouseover="window.__xss=24)',
    "<base href=javascript:/a/><a href=x>base</a>",
    "{{constructor.constructor('window.__xss=26')()}}",
]

ALLOWED_TAGS = {
    "DIV",
    "P",
    "SPAN",
    "A",
    "STRONG",
    "EM",
    "S",
    "CODE",
    "PRE",
    "UL",
    "OL",
    "LI",
    "TABLE",
    "THEAD",
    "TBODY",
    "TR",
    "TH",
    "TD",
    "INPUT",
    "BUTTON",
    "H1",
    "H2",
    "H3",
    "H4",
    "H5",
    "H6",
    "BLOCKQUOTE",
    "HR",
    "BR",
    "DETAILS",
    "SUMMARY",
    "ARTICLE",
    "HEADER",
    "LABEL",
}

CHECK_DOM = """() => {
  const bad = [];
  for (const node of document.querySelectorAll('#panes *, #conversations *, #models *, #title, #notice')) {
    for (const attr of node.attributes) {
      if (/^on/i.test(attr.name)) bad.push(`${node.tagName} ${attr.name}`);
      if (/^(href|src|action|formaction|data)$/i.test(attr.name) && !/^(https?:|mailto:)/i.test(attr.value))
        bad.push(`${node.tagName} ${attr.name}=${attr.value}`);
    }
  }
  return {bad, tags: [...new Set([...document.querySelectorAll('#panes *, #conversations *, #models *')]
    .map(n => n.tagName))], xss: window.__xss === undefined ? null : window.__xss,
    hidden: getComputedStyle(document.body).display};
}"""


def assert_inert(tab: Tab) -> None:
    tab.page.wait_for_timeout(200)  # time for an injected handler to run, were there one
    found = tab.page.evaluate(CHECK_DOM)
    assert found["xss"] is None and tab.dialogs == []
    assert found["bad"] == [], found["bad"]
    assert set(found["tags"]) <= ALLOWED_TAGS, set(found["tags"]) - ALLOWED_TAGS
    assert found["hidden"] != "none"


def test_xss_through_model_output_stays_text(tab: Tab) -> None:
    assert len(PAYLOADS) >= 20
    tab.pick("alpha", "beta")
    for payload in PAYLOADS:
        tab.send(payload)
        assert_inert(tab)
    # What was written stays readable as text.
    answers = tab.page.locator('.pane[data-model="alpha"] .msg.assistant .content').all_inner_texts()
    assert "<script>window.__xss=1</script>" in answers[0]
    assert "<img src=x onerror=window.__xss=2>" in answers[1]
    tab.shot("xss-inert")


def test_xss_through_titles_and_renaming(tab: Tab) -> None:
    for payload in PAYLOADS[:6]:
        tab.page.click("#new-chat")
        tab.send(payload)
    assert_inert(tab)
    assert titles(tab.page)[0].startswith("[md link]")
    tab.page.click("#conversations li:nth-child(1) .rename")
    tab.page.fill(".rename-input", '"><img src=x onerror=window.__xss=99><script>window.__xss=98</script>')
    tab.page.press(".rename-input", "Enter")
    assert_inert(tab)
    assert tab.page.locator("#title").inner_text().startswith('"><img')


def test_xss_through_model_names(browser: Any, site: Site) -> None:
    tab = Tab(browser, site)
    hostile = [p for p in PAYLOADS if "\n" not in p][:12]
    real = httpx.get(site.url + "/api/models").json()

    def fake_models(route: Any) -> None:
        models = [dict(real["models"][0], name=name) for name in hostile] + real["models"]
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps({**real, "models": models})
        )

    tab.page.route("**/api/models", fake_models)
    page = tab.page
    page.goto(site.url + "/")
    page.wait_for_selector('.model[data-model="alpha"]')
    try:
        page.locator('.model[data-model="alpha"] input').uncheck()
        for name in hostile[:4]:  # four columns named by an attacker, and their (failed) answers
            page.locator(".model").filter(has_text=name).first.locator("input").check()
        page.fill("#prompt", "hello")
        page.press("#prompt", "Enter")
        tab.wait("error")
        assert page.locator(".pane").count() == 4
        assert_inert(tab)
        assert page.locator(".pane h2").all_inner_texts() == hostile[:4]
    finally:
        tab.close()


def test_xss_through_an_imported_file(tab: Tab, tmp_path: Path) -> None:
    turns = [
        {"user": p, "chosen": None, "answers": [{"model": p[:200], "text": p, "state": "done"}]}
        for p in PAYLOADS
    ]
    conversations = [
        {"title": p, "system": p, "models": [p[:200]], "settings": {}, "turns": turns} for p in PAYLOADS[:5]
    ]
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({"format": "slimllm-chat", "version": 1, "conversations": conversations}))
    tab.page.set_input_files("#import", str(path))
    tab.page.wait_for_function("() => document.querySelectorAll('#conversations .open').length === 5")
    for i in range(1, 6):
        tab.page.click(f"#conversations li:nth-child({i}) .open")
        assert_inert(tab)
    assert PAYLOADS[0] in titles(tab.page) or PAYLOADS[0] in tab.page.inner_text("#conversations")


# -- accessibility ---------------------------------------------------------------------------


def axe(page: Any) -> list[str]:
    require(AXE.exists(), f"{AXE} is missing (app/chat-interface/page/build.sh)")
    page.add_script_tag(content=AXE.read_text())
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def test_axe_finds_no_serious_violation(browser: Any, site: Site) -> None:
    for scheme in ("light", "dark"):
        tab = Tab(browser, site, color_scheme=scheme, bypass_csp=True)  # bypass: to inject axe only
        page = tab.open()
        try:
            tab.pick("alpha", "beta")
            tab.send(MARKDOWN)
            tab.answer("beta").locator(".keep").click()  # a kept answer and a dimmed one
            page.click("#settings summary")
            assert axe(page) == [], scheme
        finally:
            tab.close()
    tab = Tab(browser, site, bypass_csp=True)
    try:
        tab.page.goto(site.keyed + "/")
        assert tab.page.locator('form[action="/login"]').count() == 1
        assert axe(tab.page) == []
    finally:
        tab.close()


# -- slim stays slim -------------------------------------------------------------------------


def test_page_assets_fit_the_budget() -> None:
    files = sorted(p for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    assert {p.name for p in files} >= {"app.js", "markdown.js", "store.js", "vendor.js", "style.css"}
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    assert total <= PAGE_BUDGET_GZIP, f"{total} bytes gzipped > {PAGE_BUDGET_GZIP}"
    licences = (STATIC / "vendor-licenses.txt").read_text()
    for package in ("markdown-it", "highlight.js", "linkify-it", "mdurl", "entities"):
        assert f"==== {package} " in licences


def test_first_render_is_fast(browser: Any, site: Site) -> None:
    tab = Tab(browser, site)
    try:
        tab.open()  # warm: the page's files are fetched once, as a returning user has them
        timings = []
        for _ in range(3):
            tab.page.reload()
            tab.page.wait_for_selector('body[data-ready="true"]')
            timings.append(
                tab.page.evaluate(
                    "() => ({fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime,"
                    " ready: performance.getEntriesByName('slimllm-ready')[0].startTime})"
                )
            )
        best = min(t["ready"] for t in timings)
        print(f"first render: {timings}")
        assert best < FIRST_RENDER_MS, timings
        assert min(t["fcp"] for t in timings if t["fcp"]) < FIRST_RENDER_MS, timings
    finally:
        tab.close()


# -- screenshots -----------------------------------------------------------------------------

SHOWCASE_ANSWER = """Here is the comparison you asked for:

| model | params | context |
|:------|-------:|--------:|
| {model} | {size} | 32k |

And the function, memoised:

```python
from functools import cache

@cache
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)
```

- [x] a table
- [x] some code
"""


def showcase(path: Path) -> Path:
    """An export of one conversation: two models, a table and code (the screenshots' subject)."""

    def answer(model: str, size: str, ttft: float, rate: float) -> dict[str, Any]:
        text = SHOWCASE_ANSWER.replace("{model}", model).replace("{size}", size)
        return {
            "model": model,
            "text": text,
            "state": "done",
            "ttft_ms": ttft,
            "tok_per_s": rate,
            "tokens": 96,
        }

    turns = [
        {
            "user": "Hi! Who are you?",
            "chosen": "alpha",
            "answers": [
                {
                    "model": "alpha",
                    "text": "I am **alpha**, a small model.",
                    "state": "done",
                    "ttft_ms": 41.0,
                    "tok_per_s": 88.2,
                    "tokens": 9,
                },
                {
                    "model": "beta",
                    "text": "Hello, I'm beta.",
                    "state": "done",
                    "ttft_ms": 57.0,
                    "tok_per_s": 61.5,
                    "tokens": 7,
                },
            ],
        },
        {
            "user": "Compare yourselves in a table, then write fib in Python.",
            "chosen": None,
            "answers": [answer("alpha", "0.5 B", 38.0, 86.9), answer("beta", "1.5 B", 61.0, 58.3)],
        },
    ]
    conversation = {
        "title": "Two models, a table and code",
        "system": "",
        "models": ["alpha", "beta"],
        "settings": {"max_tokens": 512, "temperature": 0.7},
        "turns": turns,
    }
    path.write_text(json.dumps({"format": "slimllm-chat", "version": 1, "conversations": [conversation]}))
    return path


@pytest.mark.parametrize(
    ("name", "context"),
    [
        ("desktop", {"viewport": {"width": 1280, "height": 860}}),
        ("phone", {"viewport": {"width": 375, "height": 800}, "is_mobile": True, "has_touch": True}),
        ("dark", {"viewport": {"width": 1280, "height": 860}, "color_scheme": "dark"}),
    ],
)
def test_screenshots(browser: Any, site: Site, tmp_path: Path, name: str, context: dict[str, Any]) -> None:
    tab = Tab(browser, site, **context)
    page = tab.open()
    try:
        page.set_input_files("#import", str(showcase(tmp_path / "showcase.json")))
        page.wait_for_selector("#conversations .open", state="attached")
        if name == "phone":
            page.click("#toggle-sidebar")
        page.click("#conversations .open")
        page.wait_for_selector('.pane[data-model="beta"] .code-block')
        tab.shot(f"chat-{name}-full")
        if name == "phone":
            page.evaluate(
                "window.scrollTo(0, document.querySelector('.pane .msg.user[data-turn=\"1\"]')"
                ".getBoundingClientRect().top + scrollY - 100)"
            )
        path = ARTIFACTS / f"chat-{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
    finally:
        tab.close()
