"""What both apps' uvicorn servers share: their connection timeouts and the settings for them and
for the `Host` check (slimllm.hosts), one definition for the inference server and the chat.

uvicorn closes a keep-alive connection that stays idle `timeout_keep_alive` seconds after an
answer, but it has no deadline for the head of a request: a client that opens connections and
sends its headers a byte at a time (slowloris) holds each one for as long as it likes, and every
byte restarts nothing. `HeadTimeoutProtocol` (uvicorn's h11 protocol, which the images run) gives
the request line and headers `header_timeout` seconds from the moment the connection opens, or
the previous answer ends; a client still sending its head then gets 408 and the connection is
closed. A request's body is the app's to read (and is bounded by its body limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import click

from slimllm.hosts import AllowedHosts

HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 5
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 36\r\nconnection: close\r\n\r\nthe request headers came too slowly\n"
)


def head_timeout_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's head (see the module doc)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def _start_head_timer(self) -> None:
            self._stop_head_timer()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._head_bytes:
                self.logger.info("a request's headers took over %g s: connection closed", header_timeout)
                self.transport.write(_TIMED_OUT)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None:
                self._head_bytes += len(data)
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._stop_head_timer()  # the head is in (or the connection is done for)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._start_head_timer()  # the next request's head, on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

    return HeadTimeoutProtocol


def server_options(*, header_timeout: float, idle_timeout: int) -> dict[str, Any]:
    """uvicorn.Config's keywords both apps share: the connection timeouts, and no proxy headers
    (clients are told apart by the peer address, or by CF-Connecting-IP from a trusted proxy;
    never by an X-Forwarded-For anyone can send)."""
    return {
        "http": head_timeout_protocol(header_timeout),
        "timeout_keep_alive": idle_timeout,
        "proxy_headers": False,
        "server_header": False,
    }


def connection_options(prefix: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """The `--allowed-hosts`, `--header-timeout` and `--idle-timeout` options of an app whose
    settings are named `{prefix}_...` (SLIMLLM or SLIMLLM_CHAT)."""

    def hosts(ctx: click.Context, param: click.Parameter, value: str) -> AllowedHosts:
        try:
            return AllowedHosts.parse(value or "")
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    options = [
        click.option(
            "--allowed-hosts",
            default="",
            callback=hosts,
            envvar=f"{prefix}_ALLOWED_HOSTS",
            show_envvar=True,
            help="Host names this server answers to besides IP addresses, localhost, names without a "
            "dot (a stack's service names), *.trycloudflare.com (quick tunnels) and any a trusted "
            "proxy (the tunnel) forwards: a DNS name of this server; `*.domain` for every name "
            "under a domain, "
            "`*` for any (no check). A request with any other Host gets 400 (DNS rebinding).",
        ),
        click.option(
            "--header-timeout",
            type=click.FloatRange(min=0.5),
            default=HEADER_TIMEOUT,
            envvar=f"{prefix}_HEADER_TIMEOUT",
            show_envvar=True,
            help="Seconds a client has to send a request's line and headers, from the moment its "
            "connection opens or its previous answer ends; a slower one gets 408 and is disconnected.",
        ),
        click.option(
            "--idle-timeout",
            type=click.IntRange(min=1),
            default=IDLE_TIMEOUT,
            envvar=f"{prefix}_IDLE_TIMEOUT",
            show_envvar=True,
            help="Seconds a kept-alive connection may stay idle between requests before it is closed.",
        ),
    ]

    def decorate(function: Callable[..., object]) -> Callable[..., object]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate
