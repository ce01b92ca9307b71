"""API keys, shared by the inference server and the chat gateway (SECURITY.md). A server's key is
read at start by `clitypes.read_key` (its environment variable or key file, never the command
line; refused when shorter than `clitypes.MIN_KEY_LENGTH`), which the command line imports
without the web framework this module needs.

- `bearer`: the token of a request's one `Authorization: Bearer <token>` header. More than one
  `Authorization` header is 400: a request is one key attempt, never a batch of guesses.
- `Secret`: equality with a secret in constant time, on bytes (SHA-256 digests of both sides, so
  neither the secret's length nor a text's encoding matters; text that is not ASCII never raises).
- `FailedKeys`: failed keys (bearer tokens, login forms) counted per client and for the whole
  server, with exponential back-off: 429 with `Retry-After` instead of an answer. Requests with the
  right key are never slowed unless their client is itself in back-off (a refused request does not
  say whether its key was right, so back-off cannot be used to test keys).
- `KeyCheck`: the three together, as both apps check a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimllm.limits import MAX_CLIENTS, too_many
from slimllm.openai_errors import ApiError

if TYPE_CHECKING:
    from starlette.types import Scope

log = logging.getLogger("slimllm.keys")

# A client may get this many keys wrong before back-off starts; then each failure doubles its
# wait, from BACKOFF_BASE_SECONDS up to CLIENT_MAX_BACKOFF_SECONDS.
CLIENT_FREE_FAILURES = 10
CLIENT_MAX_BACKOFF_SECONDS = 3600.0
# The whole server: this many failures (from clients not yet in back-off) before every client
# that has not used the right key lately waits too, up to GLOBAL_MAX_BACKOFF_SECONDS.
GLOBAL_FREE_FAILURES = 100
GLOBAL_MAX_BACKOFF_SECONDS = 300.0
BACKOFF_BASE_SECONDS = 1.0
# Failures are forgotten after this long without one (and once any back-off has ended).
FORGET_SECONDS = 3600.0
# A client that used the right key this recently is not held back by the server-wide back-off.
KNOWN_CLIENT_SECONDS = 24 * 3600.0

INVALID_KEY_MESSAGE = "missing or invalid API key (send 'Authorization: Bearer <key>')"


def invalid_key() -> ApiError:
    return ApiError(401, INVALID_KEY_MESSAGE, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def bearer(scope: Scope) -> bytes | None:
    """The token of the request's `Authorization: Bearer` header (b"" for another scheme), None
    without the header; a 400 ApiError for more than one."""
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) > 1:
        raise ApiError(
            400, f"a request may carry one Authorization header, not {len(values)}", code="invalid_request"
        )
    if not values:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def _digest(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(value).digest()


class Secret:
    """A secret that can be compared with, in constant time, but is not kept as such."""

    def __init__(self, value: bytes | str) -> None:
        self._digest = _digest(value)

    def matches(self, candidate: bytes | str) -> bool:
        return hmac.compare_digest(_digest(candidate), self._digest)


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0  # when the latest failure was
    until: float = 0.0  # back-off ends


class FailedKeys:
    """Failed key attempts per client and for the whole server, with exponential back-off.

    `attempt(client, ok)` is called for each key a client sends, right or wrong, and says whether
    to answer (None) or refuse with 429. A refused attempt is not answered, so it is no guess: it
    does not count for the server, but a wrong key sent during back-off doubles the client's wait
    (up to the cap); a right one does not. A client with a recent right key is not held back by
    the server-wide back-off. Bounded: at most MAX_CLIENTS clients of each kind are remembered.
    """

    def __init__(
        self,
        *,
        client_free: int = CLIENT_FREE_FAILURES,
        client_max: float = CLIENT_MAX_BACKOFF_SECONDS,
        global_free: int = GLOBAL_FREE_FAILURES,
        global_max: float = GLOBAL_MAX_BACKOFF_SECONDS,
        base: float = BACKOFF_BASE_SECONDS,
        forget: float = FORGET_SECONDS,
        known_for: float = KNOWN_CLIENT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_free, self.client_max = client_free, client_max
        self.global_free, self.global_max = global_free, global_max
        self.base, self.forget, self.known_for, self.clock = base, forget, known_for, clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._known: OrderedDict[str, float] = OrderedDict()  # client -> its latest right key
        self._server = _Failures()

    def _delay(self, count: int, free: int, cap: float) -> float:
        if count <= free:
            return 0.0
        return min(cap, self.base * 2.0 ** min(count - free - 1, 64))

    def _fresh(self, record: _Failures, now: float) -> _Failures:
        return _Failures() if now >= record.until and now - record.last > self.forget else record

    def _is_known(self, client: str, now: float) -> bool:
        at = self._known.get(client)
        return at is not None and now - at < self.known_for

    def _fail(self, record: _Failures, now: float, free: int, cap: float) -> None:
        record.count += 1
        record.last = now
        record.until = max(record.until, now + self._delay(record.count, free, cap))

    def attempt(self, client: str, ok: bool) -> ApiError | None:
        """Record one key from `client` (`ok`: it was right): a 429 ApiError to answer instead,
        or None to go on (to the route when `ok`, to a 401 when not)."""
        now = self.clock()
        record = self._fresh(self._clients.pop(client, _Failures()), now)
        self._server = self._fresh(self._server, now)
        server_wait = 0.0 if self._is_known(client, now) else self._server.until - now
        if max(record.until - now, server_wait) > 0:
            if not ok:
                self._fail(record, now, self.client_free, self.client_max)
            self._remember(client, record)
            whose = "this client" if record.until - now >= server_wait else "this server"
            return too_many(
                f"too many wrong API keys from {whose}: wait before trying again",
                max(record.until - now, server_wait),
            )
        if ok:  # answered; the client's failures are forgotten (its record is not put back)
            self._known[client] = now
            self._known.move_to_end(client)
            while len(self._known) > MAX_CLIENTS:
                self._known.popitem(last=False)
            return None
        self._fail(record, now, self.client_free, self.client_max)
        self._remember(client, record)
        if record.count == self.client_free + 1:
            log.warning("%d wrong API keys from %s: it now waits between attempts", record.count, client)
        self._fail(self._server, now, self.global_free, self.global_max)
        if self._server.count == self.global_free + 1:
            log.warning(
                "%d wrong API keys on this server: clients without a recent right key now wait",
                self._server.count,
            )
        return None

    def _remember(self, client: str, record: _Failures) -> None:
        self._clients[client] = record
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)


class KeyCheck:
    """A server's API key: a token (bearer or login form) is right, wrong (401) or refused (429)."""

    def __init__(self, key: str, failed: FailedKeys | None = None) -> None:
        self.secret = Secret(key)
        self.failed = failed or FailedKeys()

    def check(self, client: str, token: bytes | str | None) -> ApiError | None:
        """None when `token` is the key; otherwise the error to answer. No token (None) is a 401
        that counts as no attempt."""
        if token is None:
            return invalid_key()
        ok = self.secret.matches(token)
        refused = self.failed.attempt(client, ok)
        if refused is not None:
            return refused
        return None if ok else invalid_key()
