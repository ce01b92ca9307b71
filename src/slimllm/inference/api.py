"""The OpenAI-compatible HTTP API over the engine, plus /health and /metrics.

The model loads in a background thread after the server starts listening, so /health can say
"loading" (503) until it is ready. /health and /metrics never touch llama.cpp: they read plain
counters, so they answer at once while a generation runs.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from slimllm import __version__
from slimllm.clitypes import DEFAULT_MAX_TOKENS, MAX_BODY_BYTES, TEMPLATE_TIMEOUT, ClientSettings
from slimllm.hosts import LOCAL_ONLY, AllowedHosts, HostCheck
from slimllm.inference import tools as toolcalls
from slimllm.inference.chat_templates import JinjaChatTemplate, TemplateError
from slimllm.inference.engine import Engine, EngineError, Event, Finished, Job, QueueFull, TokenLogprob
from slimllm.inference.engine import Sampling as EngineSampling
from slimllm.inference.mailbox import Mailbox
from slimllm.inference.schemas import (
    STREAM_MODELS,
    UNSUPPORTED,
    ApplyTemplateRequest,
    ChatCompletionRequestBase,
    CompletionRequestBase,
    EmbeddingRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    Message,
    NamedToolChoice,
    Sampling,
    TokenizeRequest,
    default_max_tokens,
    embedding_request,
    operations,
    request_models,
)
from slimllm.inference.structured import SchemaError, json_object_grammar, schema_grammar
from slimllm.keys import KeyCheck, bearer
from slimllm.limits import BodyLimit, ClientLimits, Disconnected, client_key, until_disconnect
from slimllm.model import ModelError
from slimllm.networks import Network, TrustedProxies
from slimllm.openai_errors import ApiError, exception_handlers, json_body
from slimllm.openapi import document, parse

log = logging.getLogger("slimllm.inference")

# A single decode step taking longer than this means llama.cpp has stopped answering.
ENGINE_STALL_SECONDS = 60.0
T = TypeVar("T")

# SSE streams must run to completion during a graceful shutdown instead of being cut at SIGTERM;
# uvicorn's own graceful-shutdown timeout bounds how long they may take.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    request_timeout: float = 600.0
    keepalive_seconds: float = 15.0
    max_tokens_limit: int = 2048
    max_body_bytes: int = MAX_BODY_BYTES
    allowed_hosts: AllowedHosts = LOCAL_ONLY  # the Host check (slimllm.hosts)
    default_max_tokens: int = DEFAULT_MAX_TOKENS  # a request without max_tokens (at most the limit)
    embeddings: bool = False  # the engine serves /v1/embeddings: the document offers it
    template_timeout: float = TEMPLATE_TIMEOUT  # seconds a Jinja chat template may render one request
    clients: ClientSettings = field(default_factory=ClientSettings)  # limits.ClientLimits


class ServerState:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.loaded_at: float = 0.0
        self.mailbox: Mailbox | None = None  # made on the loop's thread when the app starts
        self.token_bytes = 1  # the longest token's text in bytes (token_bytes_bound), set at load
        # Rendering and tokenizing happen in worker threads, a few at a time.
        self.text_limiter = anyio.CapacityLimiter(4)
        self.embed_limiter = anyio.CapacityLimiter(1)
        self.embed_requests = 0  # embedding requests at work or waiting (bounded by --queue-size + 1)
        self.embed_seconds = 1.0  # how long the last one took, for Retry-After

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


def _sampling(req: Sampling) -> EngineSampling:
    def number(value: float | None, default: float) -> float:
        return default if value is None else float(value)

    return EngineSampling(
        temperature=number(req.temperature, 0.8),
        top_p=number(req.top_p, 0.95),
        top_k=40 if req.top_k is None else req.top_k,
        min_p=number(req.min_p, 0.05),
        repeat_penalty=number(req.repeat_penalty, 1.0),
        presence_penalty=number(req.presence_penalty, 0.0),
        frequency_penalty=number(req.frequency_penalty, 0.0),
        seed=req.seed,
        ignore_eos=bool(req.ignore_eos),
    )


def _stops(req: Sampling) -> list[str]:
    if req.stop is None:
        return []
    return [req.stop] if isinstance(req.stop, str) else list(req.stop)


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.content
        text = (
            ""
            if content is None
            else content
            if isinstance(content, str)
            else "".join(p.text for p in content)
        )
        plain: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text,
        }
        if message.tool_calls:
            plain["tool_calls"] = [c.model_dump() for c in message.tool_calls]
        if message.tool_call_id is not None:
            plain["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            plain["name"] = message.name
        out.append(plain)
    return out


@dataclass
class Output:
    """What a request asks of the output, beyond sampling."""

    grammar: str | None = None  # GBNF the text must follow
    tools: list[dict[str, Any]] | None = None  # described to the model
    tool_format: str | None = None  # read calls out of the answer, written this way
    logprobs: int | None = None  # None: off; n: each token's logprob and its n best rivals


def _format_grammar(req: Sampling) -> str | None:
    fmt = req.response_format
    if isinstance(fmt, JsonObjectFormat):
        return json_object_grammar()
    if isinstance(fmt, JsonSchemaFormat):
        try:
            return schema_grammar(fmt.json_schema.schema_)
        except SchemaError as exc:
            raise ApiError(
                400, str(exc), param="response_format.json_schema.schema", code="unsupported"
            ) from None
    return None


def _plan(req: Sampling, tool_format: str) -> Output:
    out = Output(grammar=_format_grammar(req))
    if isinstance(req, CompletionRequestBase):
        out.logprobs = req.logprobs
        return out
    assert isinstance(req, ChatCompletionRequestBase)
    if req.logprobs:
        out.logprobs = req.top_logprobs or 0
    elif req.top_logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "'tool_choice' names a tool but 'tools' is empty", param="tool_choice")
        return out
    if choice == "none":
        return out
    out.tools = [t.model_dump(exclude_none=True) for t in req.tools]
    out.tool_format = tool_format
    forced = out.tools
    if isinstance(choice, NamedToolChoice):
        forced = [t for t in out.tools if t["function"]["name"] == choice.function.name]
        if not forced:
            raise ApiError(
                400,
                f"tool_choice names '{choice.function.name}', which is not in 'tools'",
                param="tool_choice",
                code="unknown_tool",
            )
    if choice == "required" or isinstance(choice, NamedToolChoice):
        # As llama-server: one forced call unless several are asked for (a small model told it
        # may go on calling tends to repeat its call until max_tokens).
        parallel = bool(req.parallel_tool_calls) and not isinstance(choice, NamedToolChoice)
        try:
            out.grammar = toolcalls.call_grammar(forced, tool_format, parallel=parallel)
        except SchemaError as exc:
            raise ApiError(400, f"a tool's parameters: {exc}", param="tools", code="unsupported") from None
    return out


def _for_template(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tool_format: str, jinja: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) as the chat template takes them; a template that knows no tools gets
    them described in the system message."""
    if jinja and tool_format != toolcalls.GENERIC:
        return toolcalls.history_for_template(messages), tools
    plain: list[dict[str, Any]] = list(toolcalls.history_as_text(messages))
    if tools:
        described = toolcalls.generic_system_prompt(tools)
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + described}
        else:
            plain.insert(0, {"role": "system", "content": described})
    return plain, None


def token_bytes_bound(engine: Engine) -> int:
    """The longest token text of the vocabulary, in UTF-8 bytes: no token stands for more bytes of
    prompt than that (a SentencePiece space is 3 bytes as its marker, a byte token 6 as <0xNN>), so
    a prompt of more characters than context x this bound cannot fit, whatever its text."""
    longest = 1
    for token in range(engine.n_vocab):
        longest = max(longest, len(engine._token_text(token).encode("utf-8")))
    return longest


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
            if isinstance(engine.chat, JinjaChatTemplate):
                engine.chat.time_budget = settings.template_timeout
            state.token_bytes = token_bytes_bound(engine)
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

    def check_model(model: str | None, engine: Engine) -> None:
        if model is not None and model not in (settings.model_id, engine.model_path.name):
            raise ApiError(
                404,
                f"the model '{model}' does not exist; this server serves '{settings.model_id}'",
                param="model",
                code="model_not_found",
            )

    def check_length(engine: Engine, chars: int, param: str) -> None:
        """Refuse, before rendering or tokenizing it, a prompt too long for the context whatever
        its tokens (see token_bytes_bound)."""
        most = engine.ctx_per_slot * state.token_bytes
        if chars > most:
            raise ApiError(
                400,
                f"the prompt is {chars} characters; this model's {engine.ctx_per_slot}-token context "
                f"holds at most {most} (its longest token is {state.token_bytes} bytes)",
                param=param,
                code="context_length_exceeded",
            )

    def budget(engine: Engine, prompt: list[int], req: Sampling, default_cap: int) -> int:
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt", code="invalid_value")
        room = engine.ctx_per_slot - len(prompt)
        if room <= 0:
            raise ApiError(
                400,
                f"the prompt is {len(prompt)} tokens; this model's context is {engine.ctx_per_slot} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        requested = getattr(req, "max_completion_tokens", None) or getattr(req, "max_tokens", None)
        if requested is None:
            return min(room, default_cap)
        if requested > room:
            raise ApiError(
                400,
                f"max_tokens is {requested} but only {room} tokens are left in the "
                f"{engine.ctx_per_slot}-token context after the {len(prompt)}-token prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return int(requested)

    def submit(
        engine: Engine, prompt: list[int], max_tokens: int, req: Sampling, output: Output
    ) -> tuple[Job, asyncio.Queue[Event]]:
        mailbox = state.mailbox
        assert mailbox is not None  # the lifespan makes it before the first request
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called on the engine's thread
            mailbox.post(events.put_nowait, event)

        job = Job(
            prompt=prompt,
            max_tokens=max_tokens,
            sampling=_sampling(req),
            stop=_stops(req),
            emit=emit,
            grammar=output.grammar,
            logprobs=output.logprobs,
            cache_prompt=req.cache_prompt is not False,
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

    async def off_loop(work: Callable[[], T]) -> T:
        """Template rendering and tokenization run in a worker thread, never on the event loop."""
        try:
            return await anyio.to_thread.run_sync(work, limiter=state.text_limiter)
        except UnicodeEncodeError:
            raise ApiError(
                400, "the text is not valid Unicode (it has a lone surrogate)", code="invalid_value"
            ) from None

    def template_input(
        engine: Engine, messages: list[Message], tools: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        plain = _messages(messages)
        size = sum(len(m["content"]) for m in plain) + len(json.dumps(tools) if tools else "")
        check_length(engine, size, "messages")
        return _for_template(plain, tools, engine.tool_format, isinstance(engine.chat, JinjaChatTemplate))

    async def chat_prompt(
        engine: Engine, messages: list[Message], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        plain, shown = template_input(engine, messages, tools)
        return await off_loop(lambda: engine.chat_tokens(render(engine, plain, shown)))

    def planned(engine: Engine, req: Sampling) -> Output:
        output = _plan(req, engine.tool_format)
        if output.grammar:
            try:
                engine.check_grammar(output.grammar)
            except EngineError as exc:
                raise ApiError(400, str(exc), param="response_format", code="invalid_value") from None
        return output

    async def completion_prompt(engine: Engine, prompt: str | list[str] | list[int]) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = str(prompt[0])
        if isinstance(prompt, str):
            text = prompt
            check_length(engine, len(text), "prompt")
            return await off_loop(lambda: engine.completion_prompt(text))
        tokens = [int(t) for t in prompt]
        if any(t >= engine.n_vocab for t in tokens):
            raise ApiError(
                400,
                f"token ids must be between 0 and {engine.n_vocab - 1}",
                param="prompt",
                code="invalid_value",
            )
        return tokens

    async def completion_endpoint(request: Request, *, chat: bool) -> Response:
        engine = state.require_engine()
        body = await json_body(request)
        req = parse(chat_request if chat else completion_request, body, unsupported=UNSUPPORTED)
        check_model(req.model, engine)
        stream = bool(req.stream)
        include_usage = bool(stream and req.stream_options and req.stream_options.include_usage)
        output = await off_loop(lambda: planned(engine, req))
        if isinstance(req, ChatCompletionRequestBase):
            prompt = await chat_prompt(engine, req.messages, output.tools)
            max_tokens = budget(engine, prompt, req, chat_default)
        else:
            assert isinstance(req, CompletionRequestBase)
            prompt = await completion_prompt(engine, req.prompt)
            max_tokens = budget(engine, prompt, req, completion_default)
        job, events = submit(engine, prompt, max_tokens, req, output)
        reply = _Reply(chat=chat, model=settings.model_id, tool_format=output.tool_format)
        if stream:
            return EventSourceResponse(
                _stream(reply, job, events, settings.request_timeout, include_usage),
                ping=int(settings.keepalive_seconds),
                headers={"X-Request-Id": reply.id},
            )
        return await _collect(reply, job, events, request.receive, settings.request_timeout)

    async def chat_completions(request: Request) -> Response:
        return await completion_endpoint(request, chat=True)

    def render(
        engine: Engine, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        try:
            return engine.chat.render(messages, tools)
        except TemplateError as exc:
            raise ApiError(400, str(exc), param="messages", code=exc.code) from None

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
                "tool_call_format": engine.tool_format,
                "embeddings": engine.embeddings,
                "pooling": engine.pooling_name,
                "build_info": f"slimllm {__version__}",
            }
        )

    async def apply_template(request: Request) -> Response:
        """The prompt text a chat request's messages become (llama-server's /apply-template)."""
        engine = state.require_engine()
        req = parse(ApplyTemplateRequest, await json_body(request))
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        plain, shown = template_input(engine, req.messages, tools)
        return JSONResponse({"prompt": await off_loop(lambda: render(engine, plain, shown))})

    async def embeddings(request: Request) -> Response:
        """Pooled, L2-normalised embeddings (OpenAI's /v1/embeddings)."""
        engine = state.require_engine()
        req = parse(EmbeddingRequest, await json_body(request), unsupported=UNSUPPORTED)
        check_model(req.model, engine)
        if not engine.embeddings:
            # A 4xx, not llama-server's 501: the request asks for what this server was not
            # started to do, and a public endpoint answers client requests with no 5xx.
            raise ApiError(
                400,
                "this server does not serve embeddings; start it with --embeddings (SLIMLLM_EMBEDDINGS=1)",
                code="embeddings_disabled",
            )
        if req.dimensions is not None and req.dimensions != engine.n_embd:
            raise ApiError(
                400,
                f"this model's embeddings have {engine.n_embd} dimensions; 'dimensions' cannot change that",
                param="dimensions",
                code="unsupported",
            )
        release = admit_embedding(engine)
        try:
            # Cancelled as soon as the client goes away: the input then in llama.cpp runs to its end
            # (one call, at most --batch-size tokens), the rest are skipped.
            return await until_disconnect(request.receive, embed_all(engine, req))
        except Disconnected:
            log.info("an embeddings request's client left, the rest of its inputs skipped")
            return Response(status_code=499)
        finally:
            release()

    def admit_embedding(engine: Engine) -> Callable[[], None]:
        """A place among the embedding requests in the server (one at work, up to --queue-size
        waiting), or 503 with Retry-After; the returned release gives it back."""
        if state.embed_requests >= 1 + engine.queue_size:
            rejections.inc()
            seconds = state.embed_seconds * (state.embed_requests + 1)
            raise ApiError(
                503,
                "the server is busy: the embeddings queue is full, retry shortly",
                code="queue_full",
                kind="unavailable_error",
                headers={"Retry-After": str(max(1, min(60, math.ceil(seconds))))},
            )
        state.embed_requests += 1
        started = time.monotonic()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.embed_requests -= 1
                state.embed_seconds = time.monotonic() - started

        return release

    async def embed_all(engine: Engine, req: EmbeddingRequest) -> Response:
        raw: Any = req.input
        inputs: list[str | list[int]] = (
            [raw] if isinstance(raw, str) else [raw] if isinstance(raw[0], int) else list(raw)
        )
        batches: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                check_length(engine, len(item), f"input[{i}]")
                tokens = await off_loop(functools.partial(engine.completion_prompt, item))
            else:
                tokens = [int(t) for t in item]
                if any(t >= engine.n_vocab for t in tokens):
                    raise ApiError(
                        400, f"token ids must be between 0 and {engine.n_vocab - 1}", param=f"input[{i}]"
                    )
            if not 0 < len(tokens) <= engine.batch_size:
                raise ApiError(
                    400,
                    f"input {i} is {len(tokens)} tokens; an input must be 1 to {engine.batch_size} "
                    "tokens (the server's --batch-size)",
                    param="input",
                    code="context_length_exceeded" if tokens else "invalid_value",
                )
            batches.append(tokens)
        data = []
        for i, tokens in enumerate(batches):
            try:
                vector = await anyio.to_thread.run_sync(
                    functools.partial(engine.embed, tokens), limiter=state.embed_limiter
                )
            except EngineError as exc:
                raise ApiError(500, str(exc), kind="server_error") from None
            encoded: list[float] | str = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if req.encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        used = sum(len(t) for t in batches)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": settings.model_id,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    async def tokenize(request: Request) -> Response:
        """Token ids of a text; special tokens' text is parsed as those tokens (llama-server's /tokenize)."""
        engine = state.require_engine()
        req = parse(TokenizeRequest, await json_body(request))
        # No text longer than a prompt can be is tokenized: the work (and the answer's size) stays
        # that of a prompt, whoever asks.
        check_length(engine, len(req.content), "content")
        tokens = await off_loop(lambda: engine.tokenize(req.content, add_bos=bool(req.add_special)))
        return JSONResponse({"tokens": tokens})

    async def completions(request: Request) -> Response:
        return await completion_endpoint(request, chat=False)

    loaded_doc: list[dict[str, Any]] = []

    async def openapi(request: Request) -> Response:
        # Once the model is loaded, the document bounds token ids by its vocabulary.
        if state.engine is not None and not loaded_doc:
            loaded_doc.append(describe(state.engine.n_vocab))
        return JSONResponse(loaded_doc[0] if loaded_doc else openapi_doc)

    def describe(n_vocab: int | None) -> dict[str, Any]:
        chat, completion = request_models(settings.max_tokens_limit, settings.default_max_tokens, n_vocab)
        return document(
            title="slimllm inference",
            version=__version__,
            description="An OpenAI-compatible server for one GGUF model (llama.cpp).",
            operations=operations(
                chat, completion, embeddings=settings.embeddings, embedding=embedding_request(n_vocab)
            ),
            security={"bearer": {"type": "http", "scheme": "bearer"}} if settings.api_key else None,
            extra_models=STREAM_MODELS,
        )

    chat_default, completion_default = default_max_tokens(
        settings.max_tokens_limit, settings.default_max_tokens
    )
    chat_request, completion_request = request_models(settings.max_tokens_limit, settings.default_max_tokens)
    openapi_doc = describe(None)
    handlers = {
        "/health": health,
        "/metrics": metrics,
        "/v1/models": models,
        "/v1/chat/completions": chat_completions,
        "/v1/completions": completions,
        "/v1/embeddings": embeddings,
        "/props": props,
        "/apply-template": apply_template,
        "/tokenize": tokenize,
        "/openapi.json": openapi,
    }
    routes = [
        Route(path, handlers[path], methods=[method])
        for path, spec in openapi_doc["paths"].items()
        for method in (m.upper() for m in spec)
    ]
    if not settings.embeddings:  # not offered, but still says how to turn it on
        routes.append(Route("/v1/embeddings", embeddings, methods=["POST"]))
    # The tunnel's address, for the key's back-off and the client limits alike.
    proxies = TrustedProxies(settings.clients.trusted_proxies)
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(log),
        middleware=[
            Middleware(_Guard, api_key=settings.api_key, counter=http_requests, trusted=proxies.networks),
            Middleware(
                HostCheck, allowed=settings.allowed_hosts, setting="SLIMLLM_ALLOWED_HOSTS", proxies=proxies
            ),
            # With a key, only requests carrying it get this far: each is the operator's.
            Middleware(
                ClientLimits,
                paths=_LIMITED_ROUTES,
                settings=settings.clients,
                proxies=proxies,
                operator=(lambda scope: True) if settings.api_key else None,
            ),
            Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
        ],
    )


_OPEN_ROUTES = frozenset({"/health"})
# The routes that cost the server work: the per-client and global limits apply to their POSTs.
_LIMITED_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/apply-template",
    "/tokenize",
)
_ROUTES = _OPEN_ROUTES | {
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/props",
    "/apply-template",
    "/tokenize",
    "/openapi.json",
}


class _Guard:
    """API-key check on every route but the probe (slimllm.keys: one Authorization header, failed
    keys backed off), and a request counter, as plain ASGI so streams pass through."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, counter: Counter, trusted: list[Network] | None = None
    ) -> None:
        self.app, self.counter = app, counter
        self.keys = KeyCheck(api_key) if api_key else None
        self.trusted = trusted if trusted is not None else []  # kept current by ClientLimits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = path if path in _ROUTES else "other"
        status_seen = {"code": 500}

        async def counting_send(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                status_seen["code"] = message["status"]
            await send(message)

        try:
            refusal = None
            if self.keys is not None and path not in _OPEN_ROUTES:
                try:
                    refusal = self.keys.check(client_key(scope, self.trusted), bearer(scope))
                except ApiError as exc:
                    refusal = exc
            if refusal is not None:
                await refusal.response()(scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            self.counter.labels(route=route, status=str(status_seen["code"])).inc()


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
            "n_embd": engine.n_embd,
            "embeddings": engine.embeddings,
        },
    }


# JSON has no -Infinity: a token the model all but rules out gets this floor instead.
LOGPROB_FLOOR = -9999.0


def _logprob(value: float) -> float:
    return value if value > LOGPROB_FLOOR else LOGPROB_FLOOR  # NaN compares false: the floor too


class _Reply:
    """Shapes chat and text completion responses and stream chunks."""

    def __init__(self, *, chat: bool, model: str, tool_format: str | None = None) -> None:
        self.chat, self.model, self.tool_format = chat, model, tool_format
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text_offset = 0  # completions' logprobs: where the next token starts in the text

    @staticmethod
    def usage(done: Finished) -> dict[str, Any]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
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

    def logprobs(self, tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if tokens is None:
            return None
        if self.chat:
            return {
                "content": [
                    {
                        "token": t.token.text,
                        "logprob": _logprob(t.token.logprob),
                        "bytes": list(t.token.raw),
                        "top_logprobs": [
                            {"token": a.text, "logprob": _logprob(a.logprob), "bytes": list(a.raw)}
                            for a in t.top
                        ],
                    }
                    for t in tokens
                ],
                "refusal": None,
            }
        offsets = []
        for t in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(t.token.text)
        return {
            "tokens": [t.token.text for t in tokens],
            "token_logprobs": [_logprob(t.token.logprob) for t in tokens],
            "top_logprobs": [{a.text: _logprob(a.logprob) for a in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def full(self, text: str, tokens: list[TokenLogprob] | None, done: Finished) -> dict[str, Any]:
        logprobs = self.logprobs(tokens)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            reason = done.reason
            if self.tool_format:
                content, calls = toolcalls.parse(text, self.tool_format)
                if calls:
                    message = {
                        "role": "assistant",
                        "content": content,
                        "tool_calls": [c.openai() for c in calls],
                    }
                    reason = "tool_calls"
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done.reason}
        return {**self._envelope([choice], chunk=False), "usage": self.usage(done)}

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        *,
        role: bool = False,
        tokens: list[TokenLogprob] | None = None,
        calls: list[toolcalls.ToolCall] | None = None,
    ) -> dict[str, Any]:
        logprobs = self.logprobs(tokens) if tokens else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [c.openai(i) for i, c in enumerate(calls)]
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
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


async def _gather(reply: _Reply, job: Job, events: asyncio.Queue[Event], timeout: float) -> Response:
    deadline = time.monotonic() + timeout
    parts: list[str] = []
    tokens: list[TokenLogprob] | None = [] if job.logprobs is not None else None
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
        elif kind == "token" and tokens is not None:
            tokens.append(value)
        elif kind == "done":
            body = reply.full("".join(parts), tokens, value)
            return JSONResponse(body, headers={"X-Request-Id": reply.id})
        elif kind == "error":
            raise ApiError(500, str(value), kind="server_error")


async def _collect(
    reply: _Reply, job: Job, events: asyncio.Queue[Event], receive: Receive, timeout: float
) -> Response:
    """The whole completion as one response. The client's leaving is seen at once (its
    `http.disconnect`), not at the end of the generation, and frees the slot."""
    try:
        return await until_disconnect(receive, _gather(reply, job, events, timeout))
    except Disconnected:
        log.info("%s: the client left, generation cancelled", reply.id)
        return Response(status_code=499)
    finally:
        job.cancel()  # no-op once finished; frees the slot when the client left or time ran out


async def _stream(
    reply: _Reply, job: Job, events: asyncio.Queue[Event], timeout: float, include_usage: bool
) -> AsyncIterator[str]:
    deadline = time.monotonic() + timeout
    # With tools, text that may be a call is held back and sent as tool_calls at the end.
    splitter = toolcalls.StreamSplitter(reply.tool_format) if reply.chat and reply.tool_format else None
    pending: list[TokenLogprob] = []  # logprobs of tokens whose text has not been sent yet
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
            if kind == "token":
                pending.append(value)
            elif kind == "text":
                text = splitter.feed(value) if splitter else value
                if text:
                    yield json.dumps(reply.chunk(text, tokens=pending))
                    pending = []
            elif kind == "done":
                reason = value.reason
                if splitter:
                    rest, calls = splitter.finish()
                    if rest:
                        yield json.dumps(reply.chunk(rest, tokens=pending))
                        pending = []
                    if calls:
                        yield json.dumps(reply.chunk(None, calls=calls))
                        reason = "tool_calls"
                final = reply.chunk(None, reason, tokens=pending)
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
            "slimllm_prompt_tokens_cached",
            "Prompt tokens not processed because the slot's KV cache already held them (prefix reuse).",
            stats.prompt_tokens_cached,
        )
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
