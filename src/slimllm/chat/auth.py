"""The gateway's own API key: a bearer token for API clients, a login form and a session cookie for
the page.

With a key set, every route but OPEN_PATHS (`/health`, `/login` and the login form's stylesheet and
icon) needs one of
- `Authorization: Bearer <key>` (one such header; slimllm.keys compares in constant time and backs
  off a client, and the whole server, after too many wrong keys: 429 with Retry-After), or
- the session cookie the login form sets: `<session id>.<HMAC-SHA256 of the id>`. The id is 32
  random bytes that this process keeps (at most MAX_SESSIONS, each for SESSION_SECONDS); the MAC is
  keyed by a secret derived from the API key. So a cookie is not the key, expires, and ends when
  the user logs out (POST /logout forgets its id: the cookie is refused even if replayed), when
  the key changes, and when the gateway restarts (log in again). It is HttpOnly, SameSite=Strict,
  Path=/, and Secure when the request came over HTTPS (directly, or through a trusted proxy
  saying so).
A request without either gets 401: a browser asking for a page gets the login form with it, any
other client OpenAI's error shape with `WWW-Authenticate: Bearer`. A login with a wrong key counts
as a wrong key for the back-off.

This key is the gateway's alone; the backends' keys (SLIMLLM_CHAT_KEY_<NAME>) are never accepted
from clients nor sent to them.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
import time
from collections import OrderedDict

from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from slimllm.keys import KeyCheck, bearer
from slimllm.limits import MAX_CLIENTS, client_key, from_trusted_proxy
from slimllm.networks import Network
from slimllm.openai_errors import ApiError

COOKIE = "slimllm_chat_session"
# What the login form loads (one stylesheet for every page, so one definition of the colours): open to
# a visitor without a session, as the form itself is; the rest of /static needs the key.
LOGIN_STYLESHEET = "/static/style.css"
LOGIN_ICON = "/static/favicon.svg"
OPEN_PATHS = frozenset({"/health", "/login", LOGIN_STYLESHEET, LOGIN_ICON})
SESSION_SECONDS = 12 * 3600
# Sessions kept at once; a login past this ends the oldest session.
MAX_SESSIONS = MAX_CLIENTS
_SESSION_ID = re.compile(rb"[A-Za-z0-9_-]{43}")


class Keyring:
    """The gateway's key (slimllm.keys.KeyCheck) and the sessions of the login form."""

    def __init__(self, api_key: str, session_seconds: int = SESSION_SECONDS) -> None:
        self.keys = KeyCheck(api_key)
        self._secret = hmac.new(api_key.encode(), b"slimllm chat session", hashlib.sha256).digest()
        self.session_seconds = session_seconds
        self._sessions: OrderedDict[bytes, float] = OrderedDict()  # id -> expiry (monotonic)

    def _mac(self, session_id: bytes) -> bytes:
        return hmac.new(self._secret, session_id, hashlib.sha256).hexdigest().encode()

    def new_session(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        while self._sessions and next(iter(self._sessions.values())) <= now:
            self._sessions.popitem(last=False)  # expired (sessions expire in the order they began)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32).encode()
        self._sessions[session_id] = now + self.session_seconds
        return f"{session_id.decode()}.{self._mac(session_id).decode()}"

    def _session_id(self, value: bytes) -> bytes | None:
        """The id of a cookie value this gateway signed, else None."""
        session_id, _, mac = value.partition(b".")
        if not _SESSION_ID.fullmatch(session_id) or not hmac.compare_digest(mac, self._mac(session_id)):
            return None
        return session_id

    def session_valid(self, value: bytes | str, now: float | None = None) -> bool:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        session_id = self._session_id(raw)
        expiry = None if session_id is None else self._sessions.get(session_id)
        return expiry is not None and expiry > (time.monotonic() if now is None else now)

    def end_sessions(self, scope: Scope) -> None:
        """Forget the sessions of the request's cookies (logout)."""
        for value in cookies(scope, COOKIE):
            session_id = self._session_id(value)
            if session_id is not None:
                self._sessions.pop(session_id, None)

    def has_session(self, scope: Scope) -> bool:
        return any(self.session_valid(value) for value in cookies(scope, COOKIE))

    def carries_key(self, scope: Scope) -> bool:
        """The request's one bearer token is the key: the operator's own client (an eval, a CI
        job), which the client limits let wait instead of refusing. Counts no attempt."""
        try:
            token = bearer(scope)
        except ApiError:
            return False
        return token is not None and self.keys.secret.matches(token)

    def refusal(self, scope: Scope, client: str) -> ApiError | None:
        """None when the request may pass: a valid session cookie, or the key as its bearer token;
        else the error to answer (400 for several Authorization headers, 401, or 429)."""
        try:
            token = bearer(scope)
        except ApiError as exc:
            return exc
        if self.has_session(scope):
            return None
        return self.keys.check(client, token)


def cookies(scope: Scope, name: str) -> list[bytes]:
    """The values of the request's cookies called `name`, as bytes."""
    wanted = name.encode()
    found = []
    for header_name, value in scope["headers"]:
        if header_name == b"cookie":
            for part in value.split(b";"):
                cookie, _, cookie_value = part.strip().partition(b"=")
                if cookie == wanted:
                    found.append(cookie_value.strip())
    return found


def header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""


def over_https(scope: Scope, trusted: list[Network]) -> bool:
    if scope.get("scheme") == "https":
        return True
    return from_trusted_proxy(scope, trusted) and header(scope, b"x-forwarded-proto").lower() == "https"


def session_cookie(value: str, max_age: int, *, secure: bool) -> str:
    parts = [f"{COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def login_page(message: str = "") -> str:
    """The login form: plain HTML, no script, no inline style (the CSP allows neither); styled by
    the chat page's stylesheet (LOGIN_STYLESHEET, open without the key), light or dark as the
    system is. `message` (escaped here) is shown as an alert above the form."""
    notice = (
        f'<p id="login-error" class="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>slimllm chat: log in</title>
<link rel="icon" href="{LOGIN_ICON}" type="image/svg+xml">
<link rel="stylesheet" href="{LOGIN_STYLESHEET}">
</head>
<body class="login-page">
<header id="top"><h1>slimllm chat</h1></header>
<main>
<section class="login-card" aria-labelledby="login-title">
<h2 id="login-title">Log in</h2>
<p class="hint">This chat needs its key.</p>
{notice}
<form method="post" action="/login">
<label for="key">Key</label>
<input id="key" type="password" name="key" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>
</section>
</main>
</body>
</html>
"""


def wants_html(scope: Scope) -> bool:
    return scope.get("method") == "GET" and "text/html" in header(scope, b"accept")


class RequireKey:
    """ASGI middleware: 401 for every route but OPEN_PATHS without the key (see the module doc)."""

    def __init__(self, app: ASGIApp, keyring: Keyring | None, trusted: list[Network] | None = None) -> None:
        self.app, self.keyring, self.trusted = app, keyring, trusted or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keyring is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self.keyring.refusal(scope, client_key(scope, self.trusted))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        response = login_refusal(refusal) if wants_html(scope) else refusal.response()
        await response(scope, receive, send)


def login_refusal(refusal: ApiError) -> Response:
    """A refusal as a browser sees it: the login form, saying how long to wait after a 429."""
    headers = {**refusal.headers, "Cache-Control": "no-store"}
    if refusal.status != 429:
        return HTMLResponse(login_page(), status_code=refusal.status, headers=headers)
    wait = refusal.headers.get("Retry-After", "a few")
    message = f"Too many wrong keys or attempts: wait {wait} seconds before trying again."
    return HTMLResponse(login_page(message), status_code=429, headers=headers)
