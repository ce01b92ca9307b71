"""The chat gateway's request and response models, and its OpenAPI operations.

What a public client may send is listed here, and only that reaches a backend: the OpenAI
sampling parameters, bounded as the inference server bounds them, with `max_tokens` at most the
gateway's `--max-tokens-limit`. llama-server's knobs that only an operator should turn
(`ignore_eos`, `n_predict`, slot and cache controls, grammars, ...) are refused with 400; other
unknown keys are dropped, never forwarded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model

from slimllm.clitypes import GATEWAY_DEFAULT_MAX_TOKENS
from slimllm.inference.schemas import (
    CHAT_RULES,
    INT32,
    ChatFields,
    EmbeddingRequest,
    ResponseFormat,
    StreamOptions,
)
from slimllm.openapi import Body, ErrorResponse, OpenShape, Operation, OptionalInteger, Reply, Shape

# Server-side knobs of llama-server (and this project's inference server) that a public gateway
# refuses: they make a request hold a slot longer or reach into the server's state.
SERVER_ONLY = frozenset(
    {
        "ignore_eos",
        "n_predict",
        "n_keep",
        "n_probs",
        "n_indent",
        "id_slot",
        "slot_id",
        "cache_prompt",
        "grammar",
        "json_schema",
        "samplers",
        "t_max_predict_ms",
        "t_max_prompt_ms",
        "min_keep",
        "post_sampling_probs",
        "return_tokens",
        "timings_per_token",
    }
)
UNSUPPORTED = frozenset({"n", "functions", "dimensions"})
MAX_MODELS = 8

# JSON Schema for "none of these keys": schemathesis's negative cases include them.
_NO_SERVER_KNOBS: dict[str, Any] = {"not": {"anyOf": [{"required": [k]} for k in sorted(SERVER_ONLY)]}}


class GatewaySampling(Body):
    """The sampling parameters a gateway client may set (all optional)."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_NO_SERVER_KNOBS)

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: OptionalInteger = Field(None, ge=0, le=INT32)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0.01, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: OptionalInteger = Field(None, ge=-(2**63), le=2**64)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None


class ChatCompletionRequestBase(ChatFields, GatewaySampling):
    """The inference server's chat request (messages, tools, logprobs, response_format), less
    its server-side knobs."""

    model_config = ConfigDict(
        strict=True, extra="ignore", json_schema_extra={**_NO_SERVER_KNOBS, **CHAT_RULES}
    )

    model: str = Field(description="The name of a configured model (GET /v1/models).")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: OptionalInteger = Field(None, ge=1, le=1)
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, description="Accepted and not forwarded.")


class GatewayEmbeddingRequest(EmbeddingRequest):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_NO_SERVER_KNOBS)
    model: str = Field(description="The name of a configured model (GET /v1/models).")


class ChatMessage(Body):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamRequestBase(GatewaySampling):
    models: Annotated[list[str], Field(min_length=1, max_length=MAX_MODELS)] = Field(
        description=f"Up to {MAX_MODELS} distinct model names."
    )
    messages: list[ChatMessage] = Field(min_length=1)
    history: dict[str, list[ChatMessage]] | None = Field(
        None, description="Each model's earlier conversation, by model name (names from `models`)."
    )


def request_models(
    max_tokens_limit: int, names: list[str], default_max_tokens: int = GATEWAY_DEFAULT_MAX_TOKENS
) -> tuple[type[GatewaySampling], type[GatewaySampling], type[GatewayEmbeddingRequest]]:
    """(gateway chat request, stream request, embedding request) with `max_tokens` bounded by the
    gateway's limit and the configured model names listed (another name gets 404 model_not_found)."""
    default = min(default_max_tokens, max_tokens_limit)
    bound = Field(
        None, ge=1, le=max_tokens_limit, description=f"At most {max_tokens_limit}; default {default}."
    )
    listed: dict[str, Any] = {"enum": names}
    chat: type[GatewaySampling] = create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequestBase,
        max_tokens=(OptionalInteger, bound),
        max_completion_tokens=(OptionalInteger, bound),
        model=(str, Field(description="A configured model (GET /v1/models).", json_schema_extra=listed)),
    )
    stream: type[GatewaySampling] = create_model(
        "StreamRequest",
        __base__=StreamRequestBase,
        max_tokens=(OptionalInteger, bound),
        max_completion_tokens=(OptionalInteger, bound),
        models=(
            list[Annotated[str, Field(json_schema_extra=listed)]],
            Field(
                min_length=1,
                max_length=MAX_MODELS,
                description=f"Up to {MAX_MODELS} distinct model names.",
                json_schema_extra={"uniqueItems": True},
            ),
        ),
        history=(
            dict[str, list[ChatMessage]] | None,
            Field(
                None,
                description="Earlier conversations, by model name; a model's is used when it is in `models`.",
                json_schema_extra={"propertyNames": listed},
            ),
        ),
    )
    return chat, stream, embedding_request(names)


def embedding_request(names: list[str]) -> type[GatewayEmbeddingRequest]:
    """The embedding request, `model` one of `names` (the document lists those that serve them)."""
    listed: dict[str, Any] = {"enum": names}
    embedding: type[GatewayEmbeddingRequest] = create_model(
        "EmbeddingRequest",
        __base__=GatewayEmbeddingRequest,
        model=(str, Field(description="A configured model (GET /v1/models).", json_schema_extra=listed)),
    )
    return embedding


class LoginForm(Body):
    # The form has one field; the route reads at most 8 (more is 400), so the document allows no others.
    model_config = ConfigDict(strict=False, extra="ignore", json_schema_extra={"additionalProperties": False})
    key: str = Field(description="The gateway's API key.")


# -- responses -------------------------------------------------------------------------------


class ChatCompletion(OpenShape):
    """The backend's answer, passed through as it came (an OpenAI chat.completion)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class GatewayModel(Shape):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    status: Literal["up", "loading", "down", "unknown"]


class GatewayModelList(Shape):
    object: Literal["list"]
    data: list[GatewayModel]


class InstanceStatus(Shape):
    index: int
    status: Literal["ok", "loading", "down", "unknown"]
    latency_ms: float | None
    reason: str | None
    checked_at: float | None
    in_flight: int


class ModelStatus(Shape):
    name: str
    status: Literal["up", "loading", "down", "unknown"]
    latency_ms: float | None
    instances: list[InstanceStatus]


class Models(Shape):
    poll_interval: float
    models: list[ModelStatus]


class Health(Shape):
    status: Literal["ok", "degraded"]
    models: dict[str, Literal["up", "loading", "down", "unknown"]]


class Badge(Shape):
    schemaVersion: Literal[1]
    label: str
    message: str
    color: str
    isError: bool | None = None


def _errors(*statuses: int) -> dict[int | str, Reply]:
    what = {
        400: "A malformed request, or a parameter this gateway refuses (OpenAI's error shape).",
        401: "No valid API key (bearer token or session cookie).",
        404: "The model is not configured.",
        413: "The request body is larger than --max-body-bytes.",
        429: "Too many requests from this client (per minute or at once).",
        502: "The backend failed.",
        503: "No instance of the model is up, the backend is busy, or too many requests wait here.",
        504: "The backend did not answer in time.",
    }
    headers = {429: ("Retry-After",), 503: ("Retry-After",), 401: ("WWW-Authenticate",)}
    # A browser asking for a page gets the login form with its 401, and with the key's back-off 429.
    return {
        s: Reply(what[s], ErrorResponse, headers=headers.get(s, ()), also=(HTML,) if s in (401, 429) else ())
        for s in statuses
    }


HTML = "text/html"


def operations(
    chat_request: type[GatewaySampling],
    stream_request: type[GatewaySampling],
    embedding_request: type[GatewayEmbeddingRequest],
    *,
    embeddings: bool = True,
) -> list[Operation]:
    """The gateway's operations; /v1/embeddings when some model's backend serves embeddings."""
    embedding_operation = Operation(
        "/v1/embeddings",
        "POST",
        "OpenAI embeddings through the gateway (`model` picks the backend; it must serve them)",
        {
            200: Reply("The backend's answer", OpenShape),
            **_errors(400, 401, 404, 413, 429, 502, 503, 504),
        },
        request=embedding_request,
    )
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    path_param = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    return [
        Operation("/", "GET", "The chat page", {200: Reply("The page", media=HTML), **_errors(401)}),
        Operation(
            "/static/{path}",
            "GET",
            "The page's script, styles and icon",
            {200: Reply("The file", media="*/*"), **_errors(401, 404)},
            parameters=[path_param],
        ),
        Operation("/status", "GET", "Status page", {200: Reply("The page", media=HTML), **_errors(401)}),
        Operation(
            "/login",
            "GET",
            "The login form",
            {200: Reply("The form", media=HTML), 303: Reply("No key is set: to the page", media=None)},
            secured=False,
        ),
        Operation(
            "/login",
            "POST",
            "Log in: a session cookie for the page",
            {
                303: Reply("Logged in: to the page", media=None, headers=("Set-Cookie", "Location")),
                401: Reply("Wrong key: the form again", media=HTML),
                429: Reply(
                    "Too many attempts: the form again, saying how long to wait",
                    media=HTML,
                    headers=("Retry-After",),
                ),
                **_errors(400, 413),
            },
            request=LoginForm,
            request_media="application/x-www-form-urlencoded",
            secured=False,
        ),
        Operation(
            "/logout",
            "POST",
            "Log out: the session cookie is cleared",
            {303: Reply("To the login form", media=None, headers=("Set-Cookie", "Location")), **_errors(401)},
        ),
        Operation(
            "/health",
            "GET",
            "Health of the service and its models",
            {200: Reply("The service answers", Health)},
            secured=False,
        ),
        Operation(
            "/api/models", "GET", "Models and instances", {200: Reply("Models", Models), **_errors(401)}
        ),
        Operation(
            "/api/badge/{model}",
            "GET",
            "A shields.io endpoint badge",
            {200: Reply("The badge", Badge), 404: Reply("Unknown model", Badge), **_errors(401)},
            parameters=[model_param],
        ),
        Operation(
            "/api/chat/stream",
            "POST",
            "Several models' answers in one text/event-stream (start, token, done, error, final events)",
            {
                200: Reply("The stream", media="text/event-stream"),
                **_errors(400, 401, 404, 413, 429, 503),
            },
            request=stream_request,
        ),
        Operation(
            "/v1/models",
            "GET",
            "The configured models, OpenAI style",
            {200: Reply("The list", GatewayModelList), **_errors(401)},
        ),
        Operation(
            "/v1/chat/completions",
            "POST",
            "OpenAI chat completion through the gateway (`model` picks the backend)",
            {
                200: Reply(
                    "The backend's answer; with `stream: true` its text/event-stream as it came.",
                    ChatCompletion,
                    headers=("X-Request-Id",),
                    also=("text/event-stream",),
                ),
                **_errors(400, 401, 404, 413, 429, 502, 503, 504),
            },
            request=chat_request,
        ),
        *([embedding_operation] if embeddings else []),
        Operation(
            "/openapi.json",
            "GET",
            "This document",
            {200: Reply("OpenAPI 3.1", schema={"type": "object"}), **_errors(401)},
        ),
    ]
