"""The gateway's own API key: a bearer token for API clients, a login form and a session cookie for
the page.

With a key set, every route but `/health` and `/login` needs one of
- `Authorization: Bearer <key>` (compared in constant time), or
- the session cookie the login form sets: `<expiry>.<HMAC-SHA256 of the expiry>`, keyed by a
  secret derived from the API key, so a cookie is not the key, expires, and stays valid across
  restarts while the key does not change. It is HttpOnly, SameSite=Strict, Path=/, and Secure when
  the request came over HTTPS (directly, or through a trusted proxy saying so).
A request without either gets 401: a browser asking for a page gets the login form with it, any
other client OpenAI's error shape with `WWW-Authenticate: Bearer`.

This key is the gateway's alone; the backends' keys (SLIMLLM_CHAT_KEY_<NAME>) are never accepted
from clients nor sent to them.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time

from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from slimllm.limits import from_trusted_proxy
from slimllm.networks import Network
from slimllm.openai_errors import ApiError

COOKIE = "slimllm_chat_session"
OPEN_PATHS = frozenset({"/health", "/login"})
SESSION_SECONDS = 12 * 3600


class Keyring:
    """Checks bearer tokens and session cookies against the gateway's key."""

    def __init__(self, api_key: str, session_seconds: int = SESSION_SECONDS) -> None:
        self._key = api_key.encode()
        self._secret = hmac.new(self._key, b"slimllm chat session", hashlib.sha256).digest()
        self.session_seconds = session_seconds

    def key_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._key)

    def _mac(self, expiry: str) -> str:
        return hmac.new(self._secret, expiry.encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        expiry = str(int((now or time.time()) + self.session_seconds))
        return f"{expiry}.{self._mac(expiry)}"

    def session_valid(self, value: str, now: float | None = None) -> bool:
        expiry, _, mac = value.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(mac, self._mac(expiry)):
            return False
        return int(expiry) > (now or time.time())

    def authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and self.key_matches(token.strip()):
                    return True
            elif name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    cookie, _, cookie_value = part.strip().partition("=")
                    if cookie == COOKIE and self.session_valid(cookie_value):
                        return True
        return False


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
    """The login form: plain HTML, no script, no style (the CSP allows neither inline)."""
    notice = f'<p id="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>slimllm chat: log in</title>
</head>
<body>
<main>
<h1>slimllm chat</h1>
<p>This chat needs its key.</p>
{notice}
<form method="post" action="/login">
<label>key <input type="password" name="key" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button>
</form>
</main>
</body>
</html>
"""


def wants_html(scope: Scope) -> bool:
    return scope.get("method") == "GET" and "text/html" in header(scope, b"accept")


class RequireKey:
    """ASGI middleware: 401 for every route but OPEN_PATHS without the key (see the module doc)."""

    def __init__(self, app: ASGIApp, keyring: Keyring | None) -> None:
        self.app, self.keyring = app, keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.keyring is None
            or scope["path"] in OPEN_PATHS
            or self.keyring.authorised(scope)
        ):
            await self.app(scope, receive, send)
            return
        response: Response
        if wants_html(scope):
            response = HTMLResponse(login_page(), status_code=401, headers={"Cache-Control": "no-store"})
        else:
            response = ApiError(
                401,
                "missing or invalid API key (send 'Authorization: Bearer <key>')",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            ).response()
        await response(scope, receive, send)
