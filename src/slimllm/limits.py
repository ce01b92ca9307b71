"""Abuse limits shared by the inference server and the chat gateway.

- `BodyLimit`: a request body larger than the limit gets 413 in OpenAI's error shape. A declared
  `Content-Length` over the limit is refused before a byte of the body is read; a body without
  one (chunked) is counted while it is read, and refused as soon as the count passes the limit, so
  no more than the limit (plus one chunk of the server's read buffer) is ever held.
- `client_key`: who a request is from, for the per-client limits: the `CF-Connecting-IP` header
  when the peer is one of the trusted proxies (the Cloudflare tunnel's connector), else the peer.
- `RateLimiter` (requests per minute, a token bucket) and `ConcurrencyLimiter` (requests in flight)
  per client, both answering 429 with `Retry-After`, and both bounded in memory.
- `until_disconnect`: runs a request's work and cancels it as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slimllm.networks import Network
from slimllm.openai_errors import ApiError

T = TypeVar("T")
# Per-client state kept at most for this many clients; the least recently seen are forgotten first.
MAX_CLIENTS = 10_000


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than this server's limit of {limit} bytes",
            code="request_too_large",
        )


class BodyLimit:
    """ASGI middleware: at most `max_bytes` of request body per request (see the module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await ApiError(400, "invalid Content-Length", code="invalid_request").response()(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await BodyTooLarge(self.max_bytes).response()(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read: the app's exception handler answers 413.
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_key(scope: Scope, trusted: list[Network]) -> str:
    """The client's address: CF-Connecting-IP when the peer is a trusted proxy, else the peer's."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    peer_address = _address(peer)
    if trusted and peer_address is not None and any(peer_address in net for net in trusted):
        for name, value in scope["headers"]:
            if name == b"cf-connecting-ip":
                forwarded = _address(value.decode("latin-1"))
                if forwarded is not None:
                    return str(forwarded)
    return str(peer_address) if peer_address is not None else peer


def from_trusted_proxy(scope: Scope, trusted: list[Network]) -> bool:
    client = scope.get("client")
    peer = _address(client[0]) if client else None
    return peer is not None and any(peer in net for net in trusted)


def too_many(message: str, retry_after: float) -> ApiError:
    return ApiError(
        429,
        message,
        code="rate_limit_exceeded",
        kind="rate_limit_error",
        # (until - now) of a wait just set can come out a hair over its length in floating point.
        headers={"Retry-After": str(max(1, math.ceil(retry_after - 1e-6)))},
    )


class RateLimiter:
    """At most `per_minute` requests per client per minute, with bursts of up to `per_minute`
    (a token bucket refilled continuously). 0 turns it off."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def check(self, key: str) -> None:
        """Take one request from `key`'s allowance, or raise a 429 ApiError."""
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise too_many(
                f"too many requests: at most {self.per_minute} a minute from one client",
                (1.0 - tokens) / rate,
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)


class ConcurrencyLimiter:
    """At most `limit` requests in flight per client. 0 turns it off."""

    def __init__(self, limit: int, retry_after: float = 2.0) -> None:
        self.limit, self.retry_after = limit, retry_after
        self._in_flight: dict[str, int] = {}

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def acquire(self, key: str) -> Callable[[], None]:
        """Count one request of `key` until the returned release is called (once or more); a 429
        ApiError if `key` has `limit` in flight already."""
        if self.limit > 0 and self._in_flight.get(key, 0) >= self.limit:
            raise too_many(
                f"too many requests in flight: at most {self.limit} at once from one client",
                self.retry_after,
            )
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]

        return release


class Disconnected(Exception):
    """The client went away before the answer was ready."""


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """The result of `work`, or Disconnected (with `work` cancelled) once the client has gone.

    Call it after the request body is read: the next ASGI message is then `http.disconnect`,
    which the server sends as soon as the connection closes.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    # The work's own end, now that nobody waits for it.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise Disconnected
