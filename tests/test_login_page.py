"""The login page (slimllm.chat.auth.login_page) in a real browser, with the chat page's fixtures
(tests/test_chat_page.py: the app in process behind real uvicorn, Playwright driving Debian's
Chromium): styled by the chat page's stylesheet under the real CSP, light and dark, at a phone's
width, its alerts readable, axe-core clean; and exactly its stylesheet and icon open without the
key. Screenshots go to test-artifacts/chat-page/ with the chat page's.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from slimllm.chat.app import STATIC, Protection
from slimllm.chat.auth import LOGIN_ICON, LOGIN_STYLESHEET, OPEN_PATHS, login_page
from slimllm.keys import CLIENT_FREE_FAILURES
from tests import test_chat_page
from tests.support import free_port
from tests.test_chat_page import ARTIFACTS, KEY, Site, Tab, axe, serve

# The chat page's module fixtures (one browser, the app with and without the key), for this module.
browser = test_chat_page.browser
site = test_chat_page.site

PHONE = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
# The browser's own look when no stylesheet applies: a transparent page on a white canvas.
UNSTYLED = ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")


def luminance(rgb: str) -> float:
    r, g, b = (int(x) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
    return (r + g + b) / 3


def style_of(page: Any, selector: str, *properties: str) -> dict[str, str]:
    return dict(
        page.evaluate(
            "([s, ps]) => { const c = getComputedStyle(document.querySelector(s));"
            " return Object.fromEntries(ps.map(p => [p, c.getPropertyValue(p)])); }",
            [selector, list(properties)],
        )
    )


# -- what is open without the key -------------------------------------------------------------


def test_login_page_loads_only_what_is_open(site: Site) -> None:
    page = login_page("<b>x</b>")
    loaded = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    assert loaded == {LOGIN_STYLESHEET, LOGIN_ICON}
    assert loaded <= OPEN_PATHS
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # the message is escaped
    assert "<script" not in page and "style=" not in page and "<style" not in page
    for path, kind in ((LOGIN_STYLESHEET, "text/css"), (LOGIN_ICON, "image/svg+xml")):
        response = httpx.get(site.keyed + path)  # no key, no session
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind)
        assert response.content == (STATIC / path.removeprefix("/static/")).read_bytes()


def test_the_rest_of_static_and_the_routes_still_need_the_key(site: Site) -> None:
    others = sorted(f"/static/{p.name}" for p in STATIC.iterdir() if f"/static/{p.name}" not in OPEN_PATHS)
    assert {"/static/app.js", "/static/index.html", "/static/vendor.js"} <= set(others)
    near_misses = ["/static/", "/static", "/static/style.css/", "/static//style.css", "/static/style.cs"]
    for path in [*others, *near_misses, "/", "/status", "/api/models", "/v1/models", "/openapi.json"]:
        for headers in ({}, {"Accept": "text/html"}):
            response = httpx.get(site.keyed + path, headers=headers)
            assert response.status_code == 401, (path, headers, response.status_code)
        with_key = httpx.get(site.keyed + path, headers={"Authorization": f"Bearer {KEY}"})
        assert with_key.status_code != 401, path


# -- the page in the browser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "context"),
    [("desktop", DESKTOP), ("phone", PHONE), ("dark", {**DESKTOP, "color_scheme": "dark"})],
)
def test_login_page_is_styled_and_its_error_is_an_alert(
    browser: Any, site: Site, name: str, context: dict[str, Any]
) -> None:
    tab = Tab(browser, site, **context)  # the real CSP: the stylesheet must load as a file
    page = tab.page
    try:
        page.goto(site.keyed + "/")  # a browser without a session: the form, with 401
        assert page.locator('form[action="/login"]').count() == 1
        body = {
            **style_of(page, "body", "font-family", "color"),
            **style_of(page, "html", "background-color"),
        }
        assert body["background-color"] not in UNSTYLED, body
        assert "system-ui" in body["font-family"], body
        dark = luminance(body["background-color"]) < 60 and luminance(body["color"]) > 180
        assert dark == (name == "dark"), body
        header = page.locator("#top").bounding_box()
        assert header["y"] == 0 and header["width"] == context["viewport"]["width"]

        page.screenshot(path=str(ARTIFACTS / f"login-{name}-first.png"))  # as a visitor first sees it
        page.fill("#key", "not the key")
        page.click('button[type="submit"]')
        alert = page.locator('#login-error[role="alert"]')
        assert "not right" in alert.inner_text()
        boxed = style_of(page, "#login-error", "background-color", "border-left-width")
        assert boxed["background-color"] not in UNSTYLED and boxed["border-left-width"] == "4px", boxed

        page.focus("#key")  # the form's field after the refusal; its focus ring must show
        ring = style_of(page, "#key", "outline-style", "outline-width")
        assert ring == {"outline-style": "solid", "outline-width": "2px"}, ring
        page.keyboard.press("Tab")  # the submit button, reached by keyboard
        assert page.evaluate("document.activeElement.type") == "submit"
        assert style_of(page, "button[type=submit]", "outline-style")["outline-style"] == "solid"
        page.focus("#key")

        card = page.locator(".login-card").bounding_box()
        width = context["viewport"]["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert card["x"] >= 0 and card["x"] + card["width"] <= width
        assert page.locator("#key").bounding_box()["width"] > (250 if name == "phone" else 300)
        path = ARTIFACTS / f"login-{name}.png"  # after a wrong key
        page.screenshot(path=str(path))
        assert path.stat().st_size > 5_000
    finally:
        tab.close()


def test_axe_finds_no_serious_violation_on_the_login_page(browser: Any, site: Site) -> None:
    for scheme in ("light", "dark"):
        tab = Tab(browser, site, color_scheme=scheme, bypass_csp=True)  # bypass: to inject axe only
        try:
            tab.page.goto(site.keyed + "/login")
            assert axe(tab.page) == [], scheme
            tab.page.fill("#key", "wrong")
            tab.page.click('button[type="submit"]')
            tab.page.wait_for_selector("#login-error")
            assert axe(tab.page) == [], (scheme, "with the error")
        finally:
            tab.close()


def test_the_back_off_message_is_readable_on_a_phone(browser: Any, site: Site) -> None:
    """The 429 of the key's back-off, on a gateway of its own (the back-off would lock the shared one;
    its login rate limit is raised so that the key's back-off, not the rate limit, answers)."""
    with serve(
        f"alpha=http://127.0.0.1:{free_port()}", Protection(api_key=KEY, login_rate_limit=1000)
    ) as url:
        for _ in range(CLIENT_FREE_FAILURES + 1):
            httpx.post(url + "/login", data={"key": "wrong"})
        for scheme in ("light", "dark"):
            tab = Tab(browser, site, color_scheme=scheme, bypass_csp=True, **PHONE)
            page = tab.page
            try:
                page.goto(url + "/login")
                page.fill("#key", "wrong again")
                with page.expect_response(url + "/login") as answer:
                    page.click('button[type="submit"]')
                assert answer.value.status == 429
                alert = page.locator('#login-error[role="alert"]')
                assert "Too many wrong keys" in alert.inner_text()
                box = alert.bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= 375
                assert page.evaluate("document.documentElement.scrollWidth") <= 375
                assert axe(page) == [], scheme
                page.screenshot(path=str(ARTIFACTS / f"login-429-{scheme}.png"))
            finally:
                tab.close()
