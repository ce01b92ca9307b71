"""The chat interface's ASGI app.

Routes: the page (`/`, `/static/...`), a status page (`/status`), `GET /api/models`,
`POST /api/chat/stream` (one SSE stream carrying several models' answers), an OpenAI-compatible
gateway (`GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/embeddings`, where `model`
picks the backend),
`GET /health` and shields.io endpoint badges (`GET /api/badge/{model}`).

Model output reaches the browser only as JSON strings in SSE events; the page turns them into DOM
text nodes (static/markdown.js), and a strict Content-Security-Policy forbids inline script, so a
reply containing HTML or script stays text.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slimllm import __version__
from slimllm.chat.auth import Keyring, RequireKey, login_page, login_refusal, over_https, session_cookie
from slimllm.chat.backends import (
    Model,
    NoInstance,
    Registry,
    Upstream,
    UpstreamStatus,
    describe,
    error_message,
    sse_data,
)
from slimllm.chat.schemas import (
    SERVER_ONLY,
    UNSUPPORTED,
    ChatCompletionRequestBase,
    GatewaySampling,
    StreamRequestBase,
    operations,
    request_models,
)
from slimllm.chat.schemas import (
    embedding_request as embedding_model,
)
from slimllm.clitypes import (
    GATEWAY_DEFAULT_MAX_TOKENS,
    MAX_BODY_BYTES,
    MAX_IN_FLIGHT,
    MAX_WAITING,
    ClientSettings,
)
from slimllm.hosts import LOCAL_ONLY, AllowedHosts, HostCheck
from slimllm.limits import (
    BodyLimit,
    ClientLimits,
    Disconnected,
    RateLimiter,
    client_key,
    until_disconnect,
)
from slimllm.networks import Network, TrustedProxies
from slimllm.openai_errors import ApiError, exception_handlers, json_body
from slimllm.openapi import document, parse

log = logging.getLogger("slimllm.chat")

STATIC = Path(__file__).parent / "static"
M = TypeVar("M", bound=BaseModel)
# Headers of a backend's answer that the gateway passes on.
PASSED_HEADERS = ("retry-after", "x-request-id")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

BADGE_COLOURS = {"up": "brightgreen", "loading": "yellow", "down": "red", "unknown": "lightgrey"}


@dataclass(frozen=True)
class Protection:
    """The gateway's access control and abuse limits (README: Configuration)."""

    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_tokens_limit: int = 1024
    default_max_tokens: int = GATEWAY_DEFAULT_MAX_TOKENS  # sent when a request gives none (at most the limit)
    max_streams_per_client: int = 2
    rate_limit: int = 30  # generation requests a minute per client
    login_rate_limit: int = 10  # login attempts a minute per client
    trusted_proxies: tuple[Network | str, ...] = ()  # a str: a host name (slimllm.networks)
    local_clients: tuple[Network, ...] = ()  # peers exempt from per-client limits (limits.ClientLimits)
    max_in_flight: int = MAX_IN_FLIGHT  # generation requests at once, all clients together
    max_waiting: int = MAX_WAITING  # and waiting for a place; more get 503
    allowed_hosts: AllowedHosts = LOCAL_ONLY  # the Host check (slimllm.hosts)


# The routes the per-client and global limits apply to (their POSTs).
LIMITED_PATHS = ("/api/chat/stream", "/v1/chat/completions", "/v1/embeddings")


def create_app(
    registry: Registry, *, keepalive: float = 15.0, protection: Protection | None = None
) -> Starlette:
    guard = protection or Protection()
    keyring = Keyring(guard.api_key) if guard.api_key else None
    proxies = TrustedProxies(guard.trusted_proxies)
    trusted = proxies.networks  # kept current by ClientLimits
    login_rate = RateLimiter(guard.login_rate_limit)
    chat_request, stream_request, embedding_request = request_models(
        guard.max_tokens_limit, list(registry.models), guard.default_max_tokens
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if keyring is None:
            log.warning(
                "this chat is open: no SLIMLLM_CHAT_API_KEY (or --api-key-file) is set, so anyone who "
                "reaches it can use its models"
            )
        else:
            log.info("this chat needs its API key (a bearer token, or the login form at /login)")
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    def model_or_404(name: object, param: str) -> Model:
        model = registry.get(name)
        if model is None:
            offered = ", ".join(registry.models)
            raise ApiError(
                404,
                f"the model '{name}' does not exist; this service offers: {offered}",
                param=param,
                code="model_not_found",
            )
        return model

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def health(request: Request) -> Response:
        statuses = {m.name: m.status for m in registry.models.values()}
        overall = "ok" if "up" in statuses.values() else "degraded"
        return JSONResponse({"status": overall, "models": statuses})

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "poll_interval": registry.poll_interval,
                "models": [m.public() for m in registry.models.values()],
            }
        )

    async def badge(request: Request) -> Response:
        name = request.path_params["model"]
        model = registry.get(name)
        if model is None:
            body = {"schemaVersion": 1, "label": name, "message": "unknown model", "isError": True}
            return JSONResponse({**body, "color": "lightgrey"}, status_code=404)
        return JSONResponse(
            {
                "schemaVersion": 1,
                "label": model.name,
                "message": badge_message(model),
                "color": BADGE_COLOURS[model.status],
            },
            headers={"Cache-Control": "no-cache"},
        )

    async def status_page(request: Request) -> Response:
        return HTMLResponse(render_status(registry))

    def client_of(request: Request) -> str:
        return client_key(request.scope, trusted)

    def forwarded(req: GatewaySampling, exclude: set[str]) -> dict[str, Any]:
        """What goes to a backend: the validated parameters, max_tokens at most the limit."""
        out = req.model_dump(exclude_none=True, exclude=exclude, by_alias=True)
        if "max_tokens" not in out and "max_completion_tokens" not in out:
            out["max_tokens"] = min(guard.default_max_tokens, guard.max_tokens_limit)
        return out

    def validated(body: dict[str, Any], model: type[M]) -> M:
        refused = sorted(SERVER_ONLY & set(body))
        if refused:
            raise ApiError(
                400,
                f"'{refused[0]}' is a server setting this gateway does not accept",
                param=refused[0],
                code="unsupported",
            )
        return parse(model, body, unsupported=UNSUPPORTED)

    async def chat_stream(request: Request) -> Response:
        req = validated(await json_body(request), stream_request)
        assert isinstance(req, StreamRequestBase)
        names = req.models
        if len(set(names)) != len(names):
            raise ApiError(400, "'models' must be a non-empty list of distinct model names", param="models")
        chosen = [model_or_404(n, "models") for n in names]
        messages = [m.model_dump() for m in req.messages]
        history = req.history or {}
        if not set(history) <= set(registry.models):  # a model's history is used when it is asked
            raise ApiError(
                400, "'history' must map configured model names to lists of messages", param="history"
            )
        jobs = [(m, [*(h.model_dump() for h in history.get(m.name, [])), *messages]) for m in chosen]
        params = forwarded(req, {"models", "messages", "history"})
        return EventSourceResponse(
            multiplex(registry, jobs, params), ping=keepalive, headers={"Cache-Control": "no-store"}
        )

    async def openai_models(request: Request) -> Response:
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "slimllm", "status": m.status}
            for m in registry.models.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def open_upstream(
        model: Model, body: dict[str, Any], path: str = "/v1/chat/completions"
    ) -> Upstream | Response:
        try:
            return await registry.connect(model, path, body)
        except NoInstance as exc:
            raise ApiError(
                503,
                str(exc),
                code="model_unavailable",
                kind="unavailable_error",
                headers={"Retry-After": str(max(1, round(registry.poll_interval)))},
            ) from None
        except UpstreamStatus as exc:
            return Response(
                exc.body,
                status_code=exc.status,
                media_type=exc.headers.get("content-type"),
                headers=passed_headers(exc.headers),
            )
        except httpx.TimeoutException:
            raise ApiError(504, f"'{model.name}' did not answer in time", kind="timeout_error") from None
        except httpx.HTTPError as exc:
            raise ApiError(502, f"'{model.name}' failed: {describe(exc)}", kind="upstream_error") from None

    async def whole_answer(
        model: Model, body: dict[str, Any], path: str = "/v1/chat/completions"
    ) -> Response:
        upstream = await open_upstream(model, body, path)
        return upstream if isinstance(upstream, Response) else await whole_upstream(upstream, model)

    def require_model(body: dict[str, Any]) -> None:
        """The gateway's OpenAI routes pick the backend by `model`: it has no default."""
        if body.get("model") is None:
            raise ApiError(
                400,
                f"'model' is required; this service offers: {', '.join(registry.models)}",
                param="model",
                code="missing_model",
            )

    async def openai_embeddings(request: Request) -> Response:
        body = await json_body(request)
        require_model(body)
        req = validated(body, embedding_request)
        model = model_or_404(req.model, "model")
        upstream_body = req.model_dump(exclude_none=True, exclude={"model", "user"})
        # The client limits (ClientLimits, LIMITED_PATHS) count it like a chat request; the backend
        # queues (and bounds) the work, and its 503 with Retry-After is passed on.
        try:
            # The backend request is cancelled (its connection closed) as soon as this client goes.
            return await until_disconnect(
                request.receive, whole_answer(model, upstream_body, "/v1/embeddings")
            )
        except Disconnected:
            return Response(status_code=499)

    async def openai_chat(request: Request) -> Response:
        body = await json_body(request)
        require_model(body)
        req = validated(body, chat_request)
        assert isinstance(req, ChatCompletionRequestBase)
        model = model_or_404(req.model, "model")
        upstream_body = forwarded(req, {"model", "user"})
        try:
            if not req.stream:
                # The backend request is cancelled (its connection closed, which frees its slot) as
                # soon as this client goes away.
                return await until_disconnect(request.receive, whole_answer(model, upstream_body))
            upstream = await until_disconnect(request.receive, open_upstream(model, upstream_body))
            if isinstance(upstream, Response):
                return upstream
            response = upstream.response
            if response.status_code != 200:
                return await whole_upstream(upstream, model)
            return StreamingResponse(
                relay(upstream),
                media_type=response.headers.get("content-type"),
                headers=passed_headers(response.headers),
            )
        except Disconnected:
            return Response(status_code=499)

    async def whole_upstream(upstream: Upstream, model: Model) -> Response:
        response = upstream.response
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            raise ApiError(502, f"'{model.name}' failed: {describe(exc)}", kind="upstream_error") from None
        finally:
            await upstream.close()
        return Response(
            content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            headers=passed_headers(response.headers),
        )

    async def login_form(request: Request) -> Response:
        if keyring is None:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(login_page(), headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        try:
            login_rate.check(client_of(request))
        except ApiError as exc:
            return login_refusal(exc)
        raw = await request.body()
        if keyring is None:
            return RedirectResponse("/", status_code=303)
        try:
            fields = parse_qs(raw.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the form is not valid", param="key") from None
        key = (fields.get("key") or [""])[0]
        refusal = keyring.keys.check(client_of(request), key)
        if refusal is not None and refusal.status == 429:
            return login_refusal(refusal)
        if refusal is not None:
            log.warning("a login with a wrong key from %s", client_of(request))
            return HTMLResponse(login_page("That key is not right."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        secure = over_https(request.scope, trusted)
        response.headers["Set-Cookie"] = session_cookie(
            keyring.new_session(), keyring.session_seconds, secure=secure
        )
        return response

    async def login_route(request: Request) -> Response:
        """One route for both methods, so that a 405 on /login allows both."""
        return await (login if request.method == "POST" else login_form)(request)

    async def logout(request: Request) -> Response:
        if keyring is not None:
            keyring.end_sessions(request.scope)  # the cookie is refused from now on, even if replayed
        response = RedirectResponse("/login", status_code=303)
        response.headers["Set-Cookie"] = session_cookie("", 0, secure=over_https(request.scope, trusted))
        return response

    async def openapi(request: Request) -> Response:
        # /v1/embeddings is offered for the models whose backends serve them, as the health
        # checks found (a slimllm server says so in its /v1/models).
        serving = tuple(m.name for m in registry.models.values() if m.embeddings)
        if serving not in documents:
            documents[serving] = gateway_document(serving)
        return JSONResponse(documents[serving])

    def gateway_document(serving: tuple[str, ...]) -> dict[str, Any]:
        return document(
            title="slimllm chat",
            version=__version__,
            description="The chat page, its streaming API and an OpenAI-compatible gateway.",
            operations=operations(
                chat_request, stream_request, embedding_model(list(serving)), embeddings=bool(serving)
            ),
            security={"bearer": {"type": "http", "scheme": "bearer"}} if keyring else None,
        )

    documents = {tuple(registry.models): gateway_document(tuple(registry.models))}

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/status", status_page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/models", models, methods=["GET"]),
        Route("/api/badge/{model}", badge, methods=["GET"]),
        Route("/api/chat/stream", chat_stream, methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/login", login_route, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/static", _StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(log),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                HostCheck, allowed=guard.allowed_hosts, setting="SLIMLLM_CHAT_ALLOWED_HOSTS", proxies=proxies
            ),
            Middleware(RequireKey, keyring=keyring, trusted=trusted),
            Middleware(
                ClientLimits,
                paths=LIMITED_PATHS,
                settings=ClientSettings(
                    rate_limit=guard.rate_limit,
                    per_client=guard.max_streams_per_client,
                    max_in_flight=guard.max_in_flight,
                    max_waiting=guard.max_waiting,
                    local_clients=guard.local_clients,
                ),
                proxies=proxies,
                # A request with the gateway's own key is the operator's (chat/auth.py).
                operator=keyring.carries_key if keyring else None,
            ),
            Middleware(BodyLimit, max_bytes=guard.max_body_bytes),
        ],
    )


class _StaticFiles(StaticFiles):
    """StaticFiles whose 405 says what is allowed (RFC 9110's Allow)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)


# -- requests --------------------------------------------------------------------------------


def passed_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in PASSED_HEADERS if name in headers}


# -- streaming -------------------------------------------------------------------------------


Emit = Callable[[str, dict[str, Any]], None]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Decode speed: the tokens after the first over the time after the first."""
    if first is None or last is None or tokens < 2 or last <= first:
        return None
    return round((tokens - 1) / (last - first), 1)


async def relay(upstream: Upstream) -> AsyncIterator[bytes]:
    """The gateway's stream: the backend's SSE bytes as they come."""
    try:
        async for chunk in upstream.response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        # The status line is sent already: end the stream the way an OpenAI server reports a
        # failure mid-stream, with an error object.
        error = {"message": f"the backend failed: {describe(exc)}", "type": "upstream_error"}
        yield f"data: {json.dumps({'error': {**error, 'param': None, 'code': None}})}\n\n".encode()
    finally:
        await upstream.close()


async def stream_model(
    registry: Registry, model: Model, messages: list[dict[str, str]], params: dict[str, Any], emit: Emit
) -> str:
    """Stream one model's answer as start/token/done events (or one error event); the outcome."""
    start = time.monotonic()
    body = {**params, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}

    def fail(message: str, code: str, **extra: Any) -> str:
        emit("error", {"model": model.name, "message": message, "code": code, **extra})
        return "error"

    try:
        async with asyncio.timeout(registry.request_timeout):
            upstream = await registry.connect(model, "/v1/chat/completions", body)
            try:
                response = upstream.response
                if response.status_code != 200:
                    content = await response.aread()
                    message = error_message(response.status_code, content)
                    return fail(message, "upstream_error", status=response.status_code)
                emit(
                    "start",
                    {
                        "model": model.name,
                        "instance": upstream.instance.index,
                        "instances": len(model.instances),
                    },
                )
                first: float | None = None
                last: float | None = None
                count = 0
                usage: dict[str, Any] = {}
                finish: str | None = None
                async for data in sse_data(response):
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        return fail("the backend sent an event that is not JSON", "upstream_error")
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:
                        error = chunk["error"]
                        text = error.get("message") if isinstance(error, dict) else None
                        return fail(str(text or error), "upstream_error")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        if not isinstance(choice, dict):
                            continue
                        delta = choice.get("delta")
                        text = delta.get("content") if isinstance(delta, dict) else None
                        if isinstance(text, str) and text:
                            now = time.monotonic()
                            event: dict[str, Any] = {"model": model.name, "text": text}
                            if first is None:
                                first = now
                                event["ttft_ms"] = _ms(now - start)
                            last = now
                            count += 1
                            emit("token", event)
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                tokens = usage.get("completion_tokens")
                if not isinstance(tokens, int):
                    tokens = count
                emit(
                    "done",
                    {
                        "model": model.name,
                        "finish_reason": finish,
                        "tokens": tokens,
                        "ttft_ms": _ms(first - start) if first is not None else None,
                        "tok_per_s": _rate(tokens, first, last),
                        "elapsed_ms": _ms(time.monotonic() - start),
                        "instance": upstream.instance.index,
                    },
                )
                return "done"
            finally:
                await upstream.close()
    except NoInstance as exc:
        return fail(str(exc), "model_down")
    except UpstreamStatus as exc:
        return fail(error_message(exc.status, exc.body), "upstream_error", status=exc.status)
    except TimeoutError:
        return fail(f"no complete answer within {registry.request_timeout:g} s", "timeout")
    except httpx.HTTPError as exc:
        return fail(f"the backend failed: {describe(exc)}", "upstream_error")


async def multiplex(
    registry: Registry, jobs: list[tuple[Model, list[dict[str, str]]]], params: dict[str, Any]
) -> AsyncIterator[ServerSentEvent]:
    """All models' events in one stream, as they come, then one `final` event.

    Each model streams in its own task. When the client goes away, sse-starlette cancels this
    generator, which cancels the tasks; they close their backend connections, and the backends
    stop generating.
    """
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    start = time.monotonic()

    def emit(event: str, data: dict[str, Any]) -> None:
        queue.put_nowait((event, data))

    async def run(model: Model, messages: list[dict[str, str]]) -> None:
        outcome = "error"
        try:
            outcome = await stream_model(registry, model, messages, params, emit)
        except Exception:  # a bug: this model fails, the others go on
            log.exception("streaming %s failed", model.name)
            emit("error", {"model": model.name, "message": "internal error", "code": "internal_error"})
        finally:
            emit("_end", {"model": model.name, "outcome": outcome})

    tasks = [asyncio.create_task(run(m, msgs), name=f"chat-{m.name}") for m, msgs in jobs]
    outcomes: dict[str, str] = {}
    try:
        while len(outcomes) < len(tasks):
            event, data = await queue.get()
            if event == "_end":
                outcomes[data["model"]] = data["outcome"]
                continue
            yield ServerSentEvent(data=json.dumps(data), event=event)
        final = {
            "models": {m.name: outcomes[m.name] for m, _ in jobs},
            "elapsed_ms": _ms(time.monotonic() - start),
        }
        yield ServerSentEvent(data=json.dumps(final), event="final")
    finally:
        for task in tasks:
            task.cancel()


# -- status ----------------------------------------------------------------------------------


def badge_message(model: Model) -> str:
    status = model.status
    if status != "up":
        return status
    ok = sum(1 for i in model.instances if i.state == "ok")
    parts = ["up"]
    if ok < len(model.instances):
        parts.append(f"{ok}/{len(model.instances)}")
    message = " ".join(parts)
    return message if model.latency_ms is None else f"{message} · {model.latency_ms:.0f} ms"


def render_status(registry: Registry) -> str:
    now = time.time()
    rows = []
    for model in registry.models.values():
        for instance in model.instances:
            checked = "never" if instance.checked_at is None else f"{now - instance.checked_at:.0f} s ago"
            latency = "" if instance.latency_ms is None else f"{instance.latency_ms:.0f} ms"
            rows.append(
                "<tr>"
                f'<td>{html.escape(model.name)}</td><td class="status {model.status}">{model.status}</td>'
                f"<td>{instance.index}</td>"
                f'<td class="status {instance.state}">{instance.state}</td>'
                f"<td>{latency}</td><td>{instance.in_flight}</td><td>{checked}</td>"
                f"<td>{html.escape(instance.reason or '')}</td>"
                "</tr>"
            )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{max(2, round(registry.poll_interval))}">
<title>slimllm chat: status</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/style.css">
</head>
<body class="status-page">
<header><h1>slimllm chat: status</h1><nav><a href="/">chat</a></nav></header>
<main>
<table>
<thead><tr><th>model</th><th>model status</th><th>instance</th><th>instance status</th>
<th>latency</th><th>in flight</th><th>checked</th><th>reason</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
<p>Health is checked every {registry.poll_interval:g} s. Badges: <code>/api/badge/&lt;model&gt;</code>
(a shields.io endpoint).</p>
</main>
</body>
</html>
"""


class SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response, streams included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
