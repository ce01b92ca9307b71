"""What the in-process tests share: a free port, an ASGI app on real uvicorn (real HTTP on
127.0.0.1) in a thread of the test, and a bounded wait for a condition."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from tests.conftest import require

# Debian's Chromium (scripts/install-browser.sh), driven by Playwright; never a downloaded browser.
CHROMIUM = Path(os.environ.get("SLIMLLM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Poll `condition` every 20 ms until it is true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.02)


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """`app` under uvicorn on a free port of 127.0.0.1 until the block ends; yields its URL.
    `config` adds to or overrides uvicorn.Config's (the servers' own options, say); like the
    servers, no proxy headers: the peer is the client."""
    port = free_port()
    options: dict[str, Any] = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on"}
    options["proxy_headers"] = False
    server = uvicorn.Server(uvicorn.Config(app, **{**options, **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the app started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium(artifacts: Path) -> Iterator[Any]:
    """Headless Chromium for the block (its screenshots go to `artifacts`); in CI a missing browser
    or Playwright fails the test instead of skipping it."""
    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (bash scripts/install-browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install -e '.[test]')")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()
