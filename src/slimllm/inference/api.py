"""The OpenAI-compatible HTTP API over the engine, plus /health and /metrics.

The model loads in a background thread after the server starts listening, so /health can say
"loading" (503) until it is ready. /health and /metrics never touch llama.cpp: they read plain
counters, so they answer at once while a generation runs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slimllm import __version__
from slimllm.inference.chat_templates import TemplateError
from slimllm.inference.engine import Engine, EngineError, Event, Finished, Job, QueueFull, Sampling
from slimllm.inference.mailbox import Mailbox
from slimllm.model import ModelError
from slimllm.openai_errors import ApiError, exception_handlers, json_body

log = logging.getLogger("slimllm.inference")

# A single decode step taking longer than this means llama.cpp has stopped answering.
ENGINE_STALL_SECONDS = 60.0
ROLES = {"system", "user", "assistant", "developer", "tool"}

# SSE streams must run to completion during a graceful shutdown instead of being cut at SIGTERM;
# uvicorn's own graceful-shutdown timeout bounds how long they may take.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    request_timeout: float = 600.0
    keepalive_seconds: float = 15.0


class ServerState:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.loaded_at: float = 0.0
        self.mailbox: Mailbox | None = None  # made on the loop's thread when the app starts

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise ApiError(
                503,
                "the model is still loading",
                code="model_loading",
                kind="unavailable_error",
                headers={"Retry-After": "2"},
            )
        return self.engine


# -- request parsing -------------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a number", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise ApiError(
            400, f"'{name}' must be between {lo:g} and {hi:g}, got {value}", param=name, code="invalid_value"
        )
    return float(value)


def _integer(
    body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None
) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer", param=name, code="invalid_type")
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", param=name, code="invalid_value")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false", param=name, code="invalid_type")
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value) and len(value) <= 16:
        return list(value)
    raise ApiError(
        400, "'stop' must be a string or a list of at most 16 strings", param="stop", code="invalid_type"
    )


def _sampling(body: dict[str, Any]) -> Sampling:
    return Sampling(
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        top_k=int(_integer(body, "top_k", 40, 0) or 0),
        min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, 0.01, 10.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=_integer(body, "seed", None, -(2**63), 2**64),
        ignore_eos=_flag(body, "ignore_eos"),
    )


def _reject_unsupported(body: dict[str, Any], names: dict[str, Any]) -> None:
    for name, neutral in names.items():
        value = body.get(name)
        if value is not None and value != neutral:
            raise ApiError(400, f"'{name}' is not supported by this server", param=name, code="unsupported")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"'{where}' must be an object", param=where, code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"'{where}.role' must be one of {sorted(ROLES)}",
                param=f"{where}.role",
                code="invalid_value",
            )
        out.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _content(message.get("content"), where),
            }
        )
    return out


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ApiError(
                    400,
                    f"'{where}.content' parts must be text parts (images and audio are not supported)",
                    param=f"{where}.content",
                    code="unsupported",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(
        400,
        f"'{where}.content' must be a string or a list of text parts",
        param=f"{where}.content",
        code="invalid_type",
    )


# -- the app ---------------------------------------------------------------------------------


def create_app(settings: Settings, load: Callable[[], Engine], on_fatal: Callable[[str], None]) -> Starlette:
    state = ServerState()
    disable_created_metrics()  # type: ignore[no-untyped-call] # the *_created series only add noise to every scrape
    registry = CollectorRegistry()
    http_requests = Counter(
        "slimllm_http_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
    )
    rejections = Counter(
        "slimllm_queue_rejections", "Requests refused because the queue was full", registry=registry
    )
    registry.register(_EngineCollector(state))

    def load_in_background() -> None:
        try:
            engine = load()
            engine.start()
        except (EngineError, ModelError) as exc:
            state.load_error = str(exc)
            on_fatal(str(exc))
            return
        except Exception as exc:  # a bug: still one line for the operator, and the process exits
            log.exception("model load failed")
            state.load_error = f"model load failed: {exc}"
            on_fatal(state.load_error)
            return
        state.engine = engine
        state.loaded_at = time.time()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.mailbox = Mailbox(asyncio.get_running_loop())
        loader = threading.Thread(target=load_in_background, name="model-loader", daemon=True)
        loader.start()
        yield
        if state.engine is not None:
            state.engine.stop()
        state.mailbox.close()

    async def health(request: Request) -> Response:
        engine = state.engine
        if engine is None:
            if state.load_error:
                return JSONResponse({"status": "error", "reason": state.load_error}, status_code=503)
            return JSONResponse({"status": "loading"}, status_code=503)
        if not engine.alive():
            return JSONResponse(
                {"status": "error", "reason": "the inference engine stopped"}, status_code=503
            )
        if engine.busy and time.monotonic() - engine.last_progress > ENGINE_STALL_SECONDS:
            return JSONResponse(
                {"status": "error", "reason": "the inference engine is not answering"}, status_code=503
            )
        return JSONResponse(
            {
                "status": "ok",
                "slots_idle": engine.slots_count - engine.active,
                "slots_processing": engine.active,
                "requests_waiting": engine.waiting,
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        engine = state.require_engine()
        return JSONResponse(
            {"object": "list", "data": [_model_card(settings.model_id, engine, state.loaded_at)]}
        )

    def check_model(body: dict[str, Any], engine: Engine) -> None:
        model = body.get("model")
        if model is None:
            return
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
        if model not in (settings.model_id, engine.model_path.name):
            raise ApiError(
                404,
                f"the model '{model}' does not exist; this server serves '{settings.model_id}'",
                param="model",
                code="model_not_found",
            )

    def budget(engine: Engine, prompt: list[int], body: dict[str, Any], default_cap: int | None) -> int:
        room = engine.ctx_per_slot - len(prompt)
        if room <= 0:
            raise ApiError(
                400,
                f"the prompt is {len(prompt)} tokens; this model's context is {engine.ctx_per_slot} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        requested = _integer(body, "max_completion_tokens", None, 1)
        if requested is None:
            requested = _integer(body, "max_tokens", None, 1)
        if requested is None:
            return room if default_cap is None else min(room, default_cap)
        if requested > room:
            raise ApiError(
                400,
                f"max_tokens is {requested} but only {room} tokens are left in the "
                f"{engine.ctx_per_slot}-token context after the {len(prompt)}-token prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def submit(
        engine: Engine, prompt: list[int], max_tokens: int, body: dict[str, Any]
    ) -> tuple[Job, asyncio.Queue[Event]]:
        mailbox = state.mailbox
        assert mailbox is not None  # the lifespan makes it before the first request
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called on the engine's thread
            mailbox.post(events.put_nowait, event)

        job = Job(
            prompt=prompt,
            max_tokens=max_tokens,
            sampling=_sampling(body),
            stop=_stops(body),
            emit=emit,
        )
        try:
            engine.submit(job)
        except QueueFull:
            rejections.inc()
            raise ApiError(
                503,
                "the server is busy: the request queue is full, retry shortly",
                code="queue_full",
                kind="unavailable_error",
                headers={"Retry-After": str(_retry_after(engine))},
            ) from None
        return job, events

    async def completion_endpoint(request: Request, *, chat: bool) -> Response:
        engine = state.require_engine()
        body = await json_body(request)
        check_model(body, engine)
        _integer(body, "n", 1, 1, 1)  # one choice per request
        stream = _flag(body, "stream")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
        if chat:
            _reject_unsupported(body, {"tools": [], "functions": [], "logprobs": False, "top_logprobs": 0})
            prompt = engine.chat_tokens(render(engine, body))
            max_tokens = budget(engine, prompt, body, None)
        else:
            _reject_unsupported(body, {"echo": False, "suffix": "", "logprobs": 0, "best_of": 1})
            prompt = _completion_prompt(body, engine)
            max_tokens = budget(engine, prompt, body, 16)
        job, events = submit(engine, prompt, max_tokens, body)
        reply = _Reply(chat=chat, model=settings.model_id)
        if stream:
            return EventSourceResponse(
                _stream(reply, job, events, settings.request_timeout, include_usage),
                ping=int(settings.keepalive_seconds),
                headers={"X-Request-Id": reply.id},
            )
        return await _collect(reply, job, events, request, settings.request_timeout)

    async def chat_completions(request: Request) -> Response:
        return await completion_endpoint(request, chat=True)

    def render(engine: Engine, body: dict[str, Any]) -> str:
        try:
            return engine.chat.render(_messages(body))
        except TemplateError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_value") from None

    async def props(request: Request) -> Response:
        """What the server resolved at start, as llama-server's /props shows it."""
        engine = state.require_engine()
        return JSONResponse(
            {
                "model_alias": settings.model_id,
                "model_path": str(engine.model_path),
                "model_name": engine.general_name,
                "architecture": engine.architecture,
                "chat_template": engine.chat.template,
                "chat_template_description": engine.chat.description,
                "bos_token": engine.bos_token,
                "eos_token": engine.eos_token,
                "total_slots": engine.slots_count,
                "n_ctx": engine.ctx_per_slot,
                "build_info": f"slimllm {__version__}",
            }
        )

    async def apply_template(request: Request) -> Response:
        """The prompt text a chat request's messages become (llama-server's /apply-template)."""
        engine = state.require_engine()
        return JSONResponse({"prompt": render(engine, await json_body(request))})

    async def tokenize(request: Request) -> Response:
        """Token ids of a text; special tokens' text is parsed as those tokens (llama-server's /tokenize)."""
        engine = state.require_engine()
        body = await json_body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "'content' must be a string", param="content", code="invalid_type")
        return JSONResponse({"tokens": engine.tokenize(content, add_bos=_flag(body, "add_special"))})

    async def completions(request: Request) -> Response:
        return await completion_endpoint(request, chat=False)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/props", props, methods=["GET"]),
        Route("/apply-template", apply_template, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(log),
        middleware=[Middleware(_Guard, api_key=settings.api_key, counter=http_requests)],
    )


_OPEN_ROUTES = frozenset({"/health", "/metrics"})
_ROUTES = _OPEN_ROUTES | {
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/props",
    "/apply-template",
    "/tokenize",
}


class _Guard:
    """API-key check on every route but the probes, and a request counter, as plain ASGI so
    streams pass through."""

    def __init__(self, app: ASGIApp, api_key: str | None, counter: Counter) -> None:
        self.app, self.counter = app, counter
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = path if path in _ROUTES else "other"
        status_seen = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen["code"] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and path not in _OPEN_ROUTES and not self._authorised(scope):
                response = ApiError(
                    401,
                    "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    code="invalid_api_key",
                ).response()
                await response(scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            self.counter.labels(route=route, status=str(status_seen["code"])).inc()

    def _authorised(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False


def _completion_prompt(body: dict[str, Any], engine: Engine) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return engine.completion_prompt(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        if any(t < 0 or t >= engine.n_vocab for t in prompt):
            raise ApiError(
                400,
                f"token ids must be between 0 and {engine.n_vocab - 1}",
                param="prompt",
                code="invalid_value",
            )
        return list(prompt)
    raise ApiError(
        400,
        "'prompt' must be a string, a list with one string, or a list of token ids",
        param="prompt",
        code="invalid_type",
    )


def _retry_after(engine: Engine) -> int:
    stats = engine.stats
    if not stats.requests_finished:
        return 2
    per_request = (stats.prompt_seconds + stats.predicted_seconds) / stats.requests_finished
    return max(1, min(60, math.ceil(per_request * (engine.waiting + 1) / engine.slots_count)))


def _model_card(model_id: str, engine: Engine, created: float) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": int(created),
        "owned_by": "slimllm",
        "meta": {
            "file": engine.model_path.name,
            "n_ctx": engine.ctx_per_slot,
            "n_ctx_train": engine.n_ctx_train,
            "n_params": engine.n_params,
            "size": engine.size_bytes,
            "slots": engine.slots_count,
            "chat_template": engine.chat.description,
            "name": engine.general_name,
            "architecture": engine.architecture,
        },
    }


class _Reply:
    """Shapes chat and text completion responses and stream chunks."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @staticmethod
    def usage(done: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }

    def _envelope(self, choices: list[dict[str, Any]], *, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def full(self, text: str, done: Finished) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": done.reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.reason}
        return {**self._envelope([choice], chunk=False), "usage": self.usage(done)}

    def chunk(self, text: str | None, finish: str | None = None, *, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._envelope([choice], chunk=True)


async def _next_event(events: asyncio.Queue[Event], deadline: float) -> Event | None:
    """The next event, ("idle", None) after 0.5 s without one, or None past the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(events.get(), timeout=min(remaining, 0.5))
    except TimeoutError:
        return ("idle", None)


async def _collect(
    reply: _Reply, job: Job, events: asyncio.Queue[Event], request: Request, timeout: float
) -> Response:
    deadline = time.monotonic() + timeout
    parts: list[str] = []
    try:
        while True:
            event = await _next_event(events, deadline)
            if event is None:
                raise ApiError(
                    504,
                    f"generation did not finish within {timeout:g} s",
                    code="timeout",
                    kind="timeout_error",
                )
            kind, value = event
            if kind == "text":
                parts.append(value)
            elif kind == "done":
                return JSONResponse(reply.full("".join(parts), value), headers={"X-Request-Id": reply.id})
            elif kind == "error":
                raise ApiError(500, str(value), kind="server_error")
            elif await request.is_disconnected():
                return Response(status_code=499)
    finally:
        job.cancel()  # no-op once finished; frees the slot when the client left or time ran out


async def _stream(
    reply: _Reply, job: Job, events: asyncio.Queue[Event], timeout: float, include_usage: bool
) -> AsyncIterator[str]:
    deadline = time.monotonic() + timeout
    try:
        if reply.chat:
            yield json.dumps(reply.chunk(None, role=True))
        while True:
            event = await _next_event(events, deadline)
            if event is None:
                error = {
                    "message": f"generation did not finish within {timeout:g} s",
                    "type": "timeout_error",
                    "param": None,
                    "code": "timeout",
                }
                yield json.dumps({"error": error})
                break
            kind, value = event
            if kind == "text":
                yield json.dumps(reply.chunk(value))
            elif kind == "done":
                final = reply.chunk(None, value.reason)
                final["usage"] = reply.usage(value)
                yield json.dumps(final)
                if include_usage:
                    yield json.dumps({**reply._envelope([], chunk=True), "usage": reply.usage(value)})
                break
            elif kind == "error":
                yield json.dumps(
                    {"error": {"message": str(value), "type": "server_error", "param": None, "code": None}}
                )
                break
        yield "[DONE]"
    finally:
        # Runs on completion and when the client disconnects (the task is cancelled): the slot is
        # freed at the engine's next step instead of generating for nobody.
        job.cancel()


class _EngineCollector(Collector):
    """llama-server's `llamacpp:*` metrics, read from the engine's counters at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Any:
        engine = self.state.engine
        stats = engine.stats if engine else None
        loaded = GaugeMetricFamily("slimllm_model_loaded", "1 once the model is loaded and serving")
        loaded.add_metric([], 1.0 if engine else 0.0)
        yield loaded
        if engine is None or stats is None:
            return

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            metric = CounterMetricFamily(name, doc)
            metric.add_metric([], value)
            return metric

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(name, doc)
            metric.add_metric([], value)
            return metric

        yield counter("llamacpp:prompt_tokens", "Number of prompt tokens processed.", stats.prompt_tokens)
        yield counter("llamacpp:prompt_seconds", "Prompt process time", stats.prompt_seconds)
        yield counter(
            "llamacpp:tokens_predicted", "Number of generation tokens processed.", stats.predicted_tokens
        )
        yield counter("llamacpp:tokens_predicted_seconds", "Predict process time", stats.predicted_seconds)
        yield counter("llamacpp:n_decode", "Total number of llama_decode() calls", stats.decode_calls)
        yield gauge(
            "llamacpp:n_busy_slots_per_decode",
            "Average number of busy slots per llama_decode() call",
            stats.busy_slots_in_decodes / stats.decode_calls if stats.decode_calls else 0.0,
        )
        yield gauge(
            "llamacpp:prompt_tokens_seconds",
            "Average prompt throughput in tokens/s.",
            stats.prompt_tokens / stats.prompt_seconds if stats.prompt_seconds else 0.0,
        )
        yield gauge(
            "llamacpp:predicted_tokens_seconds",
            "Average generation throughput in tokens/s.",
            stats.predicted_tokens / stats.predicted_seconds if stats.predicted_seconds else 0.0,
        )
        yield gauge("llamacpp:requests_processing", "Number of requests processing.", engine.active)
        yield gauge("llamacpp:requests_deferred", "Number of requests deferred.", engine.waiting)
        slots = GaugeMetricFamily("slimllm_slots", "Slots by state", labels=["state"])
        slots.add_metric(["busy"], engine.active)
        slots.add_metric(["idle"], engine.slots_count - engine.active)
        yield slots
