"""Abuse limits shared by the inference server and the chat gateway.

- `BodyLimit`: a request body larger than the limit gets 413 in OpenAI's error shape. A declared
  `Content-Length` over the limit is refused before a byte of the body is read; a body without
  one (chunked) is counted while it is read, and refused as soon as the count passes the limit, so
  no more than the limit (plus one chunk of the server's read buffer) is ever held.
- `client_key`: who a request is from, for the per-client limits: the `CF-Connecting-IP` header
  when the peer is one of the trusted proxies (the Cloudflare tunnel's connector), else the peer;
  an IPv6 client is its /64 (one subscriber's or one host's share: anyone holding one has all of
  its addresses), an IPv4-mapped IPv6 address is the IPv4 address.
- `RateLimiter` (requests per minute, a token bucket) and `ConcurrencyLimiter` (requests in flight)
  per client, both answering 429 with `Retry-After`, and both bounded in memory.
- `Admission`: the global cap: at most so many requests in flight, then at most so many waiting,
  served one client after the other (each client's own in order); past that 503 with Retry-After.
- `ClientLimits`: the ASGI middleware both apps put in front of their costly routes: the per-client
  limits for public clients, the global cap for everyone (see its doc for who is local).
- `until_disconnect`: runs a request's work and cancels it as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slimllm.clitypes import ClientSettings
from slimllm.networks import RESOLVE_SECONDS, Address, Network, TrustedProxies
from slimllm.openai_errors import ApiError

T = TypeVar("T")
# Per-client state kept at most for this many clients; the least recently seen are forgotten first.
MAX_CLIENTS = 10_000
# The prefix one IPv6 client is known by: a /64 is the smallest block a network hands out.
IPV6_CLIENT_PREFIX = 64


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


def _address(text: str) -> Address | None:
    """An address (an IPv4-mapped IPv6 address as IPv4, a zone dropped), None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip().split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(scope: Scope) -> Address | None:
    client = scope.get("client")
    return _address(client[0]) if client else None


def client_group(address: Address) -> str:
    """The key of a client's limits: an IPv4 address, or the /64 of an IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def client_key(scope: Scope, trusted: Iterable[Network]) -> str:
    """Who the client is (client_group): CF-Connecting-IP when the peer is a trusted proxy, else
    the peer."""
    client = scope.get("client")
    peer = peer_address(scope)
    if peer is not None and any(peer in net for net in trusted):
        for name, value in scope["headers"]:
            if name == b"cf-connecting-ip":
                forwarded = _address(value.decode("latin-1"))
                if forwarded is not None:
                    return client_group(forwarded)
    if peer is not None:
        return client_group(peer)
    return client[0] if client else "unknown"


def from_trusted_proxy(scope: Scope, trusted: Iterable[Network]) -> bool:
    peer = peer_address(scope)
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

    def check(self, key: str) -> None:
        """A 429 ApiError if `key` has `limit` in flight already."""
        if self.limit > 0 and self._in_flight.get(key, 0) >= self.limit:
            raise too_many(
                f"too many requests in flight: at most {self.limit} at once from one client",
                self.retry_after,
            )

    def acquire(self, key: str) -> Callable[[], None]:
        """Count one request of `key` until the returned release is called (once or more); a 429
        ApiError if `key` has `limit` in flight already."""
        self.check(key)
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


def server_busy(waiting: int, retry_after: float) -> ApiError:
    return ApiError(
        503,
        f"the server is busy: {waiting} requests are waiting already, retry shortly",
        code="server_busy",
        kind="unavailable_error",
        headers={"Retry-After": str(max(1, min(60, math.ceil(retry_after))))},
    )


class Admission:
    """The global cap: at most `max_in_flight` requests at once (0: no cap); the next ones wait,
    at most `max_waiting` of them, and past that get 503 with Retry-After.

    Waiting requests are let in one client after the other (round robin over the clients that
    wait, each client's own in the order they came), so a client with one request waiting is
    served after at most one request of each other waiting client, however many those have."""

    def __init__(self, max_in_flight: int, max_waiting: int) -> None:
        self.max_in_flight, self.max_waiting = max_in_flight, max_waiting
        self.in_flight = 0
        self.waiting = 0
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._seconds = 2.0  # a moving average of how long a request holds its place

    async def enter(self, key: str) -> Callable[[], None]:
        """Wait for a place (raises a 503 ApiError when too many wait); returns its release."""
        if self.max_in_flight <= 0:
            return lambda: None
        if self.in_flight < self.max_in_flight and not self.waiting:
            self.in_flight += 1
            return self._releaser()
        if self.waiting >= self.max_waiting:
            raise server_busy(self.waiting, self._seconds * (self.waiting + 1) / self.max_in_flight)
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append(place)
        self.waiting += 1
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self._release()  # let in, then cancelled: the place goes to the next
            else:
                self._drop(key, place)
            raise
        return self._releaser()

    def _drop(self, key: str, place: asyncio.Future[None]) -> None:
        queue = self._queues.get(key)
        if queue is not None and place in queue:
            queue.remove(place)
            self.waiting -= 1
            if not queue:
                del self._queues[key]

    def _releaser(self) -> Callable[[], None]:
        start = time.monotonic()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)
                self._release()

        return release

    def _release(self) -> None:
        self.in_flight -= 1
        while self.in_flight < self.max_in_flight and self._queues:
            key, queue = next(iter(self._queues.items()))
            place = queue.popleft()
            self.waiting -= 1
            if queue:
                self._queues.move_to_end(key)  # the other clients' turn first
            else:
                del self._queues[key]
            if not place.done():
                self.in_flight += 1
                place.set_result(None)


class ClientLimits:
    """ASGI middleware: the limits of ClientSettings on the POST routes in `paths`.

    Who is local: a request that carries the server's own key (`operator`), or whose peer is in
    `local_clients` (by default loopback and the container's own networks: the host, whose published
    ports reach the container through the bridge gateway, and the stack's other services) and is
    not a trusted proxy. Whatever comes through the tunnel, or from anywhere else, is public.

    A public client gets 429 with Retry-After past `per_client` requests in flight (waiting ones
    included) or past `rate_limit` a minute. Every request then takes a place under the global cap,
    waiting for one in fair order (Admission) if need be; a local request only ever waits there,
    like a direct call waits in the inference server's queue, so the operator's own jobs (an
    eval at concurrency 16, the health monitor) are never refused by limits meant for strangers.
    Every request, on any route, also keeps the trusted proxies' addresses fresh."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Iterable[str],
        settings: ClientSettings,
        proxies: TrustedProxies | None = None,
        operator: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app, self.paths = app, frozenset(paths)
        self.proxies = proxies or TrustedProxies(settings.trusted_proxies)
        self.local, self.operator = list(settings.local_clients), operator
        self.rate = RateLimiter(settings.rate_limit)
        self.per_client = ConcurrencyLimiter(settings.per_client)
        self.admission = Admission(settings.max_in_flight, settings.max_waiting)

    async def who(self, scope: Scope) -> tuple[str, bool]:
        """The client's key, and whether the request is local (see the class doc)."""
        peer = peer_address(scope)
        trusted = False
        if peer is not None:
            if self.proxies.needs_lookup(peer):
                await self.proxies.refresh(0)  # an answer from before this peer came is no answer
                if not self.proxies.trusts(peer):
                    self.proxies.checked(peer)
            else:
                self.proxies.refresh_soon(RESOLVE_SECONDS)
            trusted = self.proxies.trusts(peer)
        key = client_key(scope, self.proxies.networks)
        if self.operator is not None and self.operator(scope):
            return key, True
        local = not trusted and peer is not None and any(peer in net for net in self.local)
        return key, local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key, local = await self.who(scope)
        if scope["path"] not in self.paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        release_client: Callable[[], None] = lambda: None  # noqa: E731
        try:
            if not local:
                self.per_client.check(key)  # before the rate: a refused request takes no token
                self.rate.check(key)
                release_client = self.per_client.acquire(key)
            release = await self.admission.enter(key)
        except ApiError as exc:
            release_client()
            await exc.response()(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            release()
            release_client()


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
