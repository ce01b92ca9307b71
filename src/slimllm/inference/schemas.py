"""The inference server's request and response models, and its OpenAPI operations.

The request models are what the routes accept (validated by `slimllm.openapi.parse`); fields
that OpenAI defines but this server does not implement are accepted only with their neutral value
(`n` 1, `echo` false, ...). Unknown keys are ignored, as OpenAI clients send many. The
`max_tokens` bound is the server's `--max-tokens-limit`, so the models are made per app. The
chat gateway builds its requests from the same parts, so both accept the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model, model_validator
from pydantic_core import PydanticCustomError

from slimllm.clitypes import DEFAULT_MAX_TOKENS
from slimllm.openapi import (
    Body,
    ErrorResponse,
    NonNegativeInteger,
    OpenShape,
    Operation,
    OptionalInteger,
    Reply,
    Shape,
    integral,
)

FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]
UNSUPPORTED = frozenset({"n", "functions", "echo", "suffix", "best_of", "dimensions"})
INT32 = 2**31 - 1
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
FUNCTION_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"


class TextPart(Body):
    type: Literal["text"]
    text: str


class FunctionCall(Body):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="The arguments as JSON text, as the model wrote them.")


class ToolCallIn(Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


Content = str | list[TextPart]


class MessageBase(Body):
    """What every message may carry; each role's model below says what it must."""

    content: Content | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="An assistant turn's calls, sent back in the history."
    )
    tool_call_id: str | None = Field(None, description="In a `tool` message: the call it answers.")


class SystemMessage(MessageBase):
    role: Literal["system"]
    content: Content


class DeveloperMessage(MessageBase):
    role: Literal["developer"]
    content: Content


class UserMessage(MessageBase):
    role: Literal["user"]
    content: Content


# OpenAI's reference: an assistant turn's content is "required unless tool_calls is specified".
_CONTENT_OR_CALLS: dict[str, Any] = {
    "anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
    ]
}


class AssistantTurn(MessageBase):
    """An earlier answer sent back in the history: its text, its tool calls, or both."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_CONTENT_OR_CALLS)
    role: Literal["assistant"]

    @model_validator(mode="after")
    def _content_or_calls(self) -> AssistantTurn:
        if self.content is None and not self.tool_calls:
            raise PydanticCustomError(
                "missing", "an assistant message needs 'content' or 'tool_calls'", {"field": "content"}
            )
        return self


class ToolMessage(MessageBase):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(description="The call this message answers.")


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return f"role={role}" if isinstance(role, str) else None


ROLES = ("system", "developer", "user", "assistant", "tool")
# The role picks what a message must carry (OpenAI's API reference): content for system,
# developer, user and tool (and tool_call_id for tool), content or tool_calls for assistant.
# The tags read "role=..." so that an error's location names the field, not the tag
# (slimllm.openapi.parse leaves them out).
Message = Annotated[
    Annotated[SystemMessage, Tag("role=system")]
    | Annotated[DeveloperMessage, Tag("role=developer")]
    | Annotated[UserMessage, Tag("role=user")]
    | Annotated[AssistantTurn, Tag("role=assistant")]
    | Annotated[ToolMessage, Tag("role=tool")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message=f"must be one of: {', '.join(ROLES)}",
        custom_error_context={"field": "role"},
    ),
]


class FunctionDefinition(Body):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="A JSON Schema; with tool_choice required or named, enforced while sampling."
    )
    strict: bool | None = None


class Tool(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(Body):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the output follows.")
    strict: bool | None = None


class TextFormat(Body):
    type: Literal["text"]


class JsonObjectFormat(Body):
    type: Literal["json_object"]


class JsonSchemaFormat(Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(Body):
    include_usage: bool | None = None


class Sampling(Body):
    """Sampling parameters (OpenAI's, plus llama-server's top_k, min_p, repeat_penalty, ignore_eos)."""

    model: str | None = Field(None, description="The served model's id (or its file name); optional.")
    temperature: float | None = Field(None, ge=0, le=2, description="Default 0.8; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Default 0.95.")
    top_k: OptionalInteger = Field(None, ge=0, le=INT32, description="Default 40; 0 turns it off.")
    min_p: float | None = Field(None, ge=0, le=1, description="Default 0.05.")
    repeat_penalty: float | None = Field(None, ge=0.01, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: OptionalInteger = Field(None, ge=-(2**63), le=2**64)
    stop: str | Annotated[list[str], Field(max_length=16)] | None = Field(
        None, description="Up to 16 stop strings."
    )
    ignore_eos: bool | None = Field(None, description="llama-server's: generate exactly max_tokens.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: OptionalInteger = Field(None, ge=1, le=1, description="Only 1 choice per request.")
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the output is enforced by a grammar while sampling."
    )
    cache_prompt: bool | None = Field(
        None, description="llama-server's: reuse the slot's cached prompt prefix (default true)."
    )


class ChatFields(Body):
    """What a chat request adds to the sampling parameters (shared with the chat gateway)."""

    messages: list[Message] = Field(min_length=1)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Default auto with tools; required or a named function is enforced by a grammar."
    )
    parallel_tool_calls: bool | None = Field(
        None, description="With tool_choice required: allow several calls (default: one, as llama-server)."
    )
    functions: list[Any] | None = Field(None, max_length=0, description="Deprecated by OpenAI: use tools.")
    logprobs: bool | None = None
    top_logprobs: OptionalInteger = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Needs logprobs: true."
    )


# What a chat request's fields ask of each other, in the document too (a client, or a fuzzer,
# that follows it is not refused): top_logprobs needs logprobs, and a required or named
# tool_choice needs tools.
CHAT_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {
                "required": ["top_logprobs"],
                "properties": {"top_logprobs": {"type": "integer", "minimum": 1}},
            },
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        },
        {
            "if": {
                "required": ["tool_choice"],
                "properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}},
            },
            "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
        },
    ]
}


class ChatCompletionRequestBase(ChatFields, Sampling):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=CHAT_RULES)


def _exactly(kind: type) -> Callable[[Any], Any]:
    """A literal's own JSON type only: Python takes 0 for False and True for 1."""

    def check(value: Any) -> Any:
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not kind:
            raise ValueError(f"Input should be {kind.__name__}")
        return value

    return check


class CompletionRequestBase(Sampling):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=1)]
        | Annotated[list[NonNegativeInteger], Field(min_length=1)]
    ) = Field(description="A string, a list of one string, or a list of token ids.")
    echo: Annotated[Literal[False], BeforeValidator(_exactly(bool))] | None = None
    suffix: Literal[""] | None = None
    logprobs: OptionalInteger = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="The sampled token's and this many best tokens' logprobs.",
    )
    best_of: Annotated[Literal[1], BeforeValidator(_exactly(int))] | None = None


MAX_EMBEDDING_INPUTS = 256


class EmbeddingRequest(Body):
    model: str | None = None
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[NonNegativeInteger], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[NonNegativeInteger], Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        ]
    ) = Field(description="A string, a list of strings, token ids, or a list of token id lists.")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: OptionalInteger = Field(None, description="Not supported: the model's own dimension only.")
    user: str | None = None


# A text completion without max_tokens gets OpenAI's 16 (a chat request: --default-max-tokens).
COMPLETION_DEFAULT_MAX_TOKENS = 16


def token_ids(n_vocab: int | None) -> Any:
    """A list of token ids, each below the vocabulary's size once the model is loaded (the
    document served then says so; the routes check it)."""
    item: Any = (
        NonNegativeInteger
        if n_vocab is None
        else Annotated[int, Field(ge=0, le=n_vocab - 1), BeforeValidator(integral)]
    )
    return Annotated[list[item], Field(min_length=1)]


def _prompt(n_vocab: int | None) -> Any:
    return (
        str | Annotated[list[str], Field(min_length=1, max_length=1)] | token_ids(n_vocab),
        Field(description="A string, a list of one string, or a list of token ids."),
    )


def embedding_request(n_vocab: int | None = None) -> type[EmbeddingRequest]:
    ids = token_ids(n_vocab)
    many = Annotated[list[ids], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]  # type: ignore[valid-type]
    texts = Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    model: type[EmbeddingRequest] = create_model(
        "EmbeddingRequest",
        __base__=EmbeddingRequest,
        input=(
            str | texts | ids | many,
            Field(description="A string, a list of strings, token ids, or a list of token id lists."),
        ),
    )
    return model


def _with_limit(base: type[Sampling], name: str, limit: int, default: int, **fields: Any) -> type[Sampling]:
    bound = Field(
        None,
        ge=1,
        le=limit,
        description=f"At most {limit} (the server's --max-tokens-limit); default {default}.",
    )
    model: type[Sampling] = create_model(
        name,
        __base__=base,
        max_tokens=(OptionalInteger, bound),
        max_completion_tokens=(OptionalInteger, bound),
        **fields,
    )
    return model


def default_max_tokens(limit: int, default: int) -> tuple[int, int]:
    """(chat, completion) max_tokens of a request that gives none: the settings', at most the limit."""
    chat = min(default, limit)
    return chat, min(COMPLETION_DEFAULT_MAX_TOKENS, chat)


def request_models(
    max_tokens_limit: int, default: int = DEFAULT_MAX_TOKENS, n_vocab: int | None = None
) -> tuple[type[Sampling], type[Sampling]]:
    """(chat request, completion request) with `max_tokens` bounded by the server's limit (and
    token ids by the vocabulary, once it is known)."""
    chat, completion = default_max_tokens(max_tokens_limit, default)
    prompt = {"prompt": _prompt(n_vocab)} if n_vocab is not None else {}
    return (
        _with_limit(ChatCompletionRequestBase, "ChatCompletionRequest", max_tokens_limit, chat),
        _with_limit(CompletionRequestBase, "CompletionRequest", max_tokens_limit, completion, **prompt),
    )


class ApplyTemplateRequest(Body):
    messages: list[Message] = Field(min_length=1)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None


class TokenizeRequest(Body):
    content: str
    add_special: bool | None = Field(None, description="Add the model's BOS token (default false).")


# -- responses -------------------------------------------------------------------------------


class PromptTokensDetails(Shape):
    cached_tokens: int


class Usage(Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCallOut(Shape):
    name: str
    arguments: str


class ToolCallOut(Shape):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class StreamedToolCall(ToolCallOut):
    index: int


class TopLogprob(Shape):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Shape):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class CompletionLogprobs(Shape):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class AssistantMessage(Shape):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(Shape):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(Shape):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[StreamedToolCall] | None = None


class ChunkChoice(Shape):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(Shape):
    """One `data:` event of a chat stream (the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(Shape):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(Shape):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(Shape):
    """One `data:` event of a text completion stream."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(Shape):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32s.")


class EmbeddingUsage(Shape):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Shape):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelMeta(Shape):
    file: str
    n_ctx: int
    n_ctx_train: int
    n_params: int
    size: int
    slots: int
    chat_template: str
    name: str
    architecture: str
    n_embd: int
    embeddings: bool


class ModelCard(Shape):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    meta: ModelMeta


class ModelList(Shape):
    object: Literal["list"]
    data: list[ModelCard]


class Props(Shape):
    model_alias: str
    model_path: str
    model_name: str
    architecture: str
    chat_template: str
    chat_template_description: str
    bos_token: str
    eos_token: str
    total_slots: int
    n_ctx: int
    tool_call_format: str
    embeddings: bool
    pooling: str | None
    build_info: str


class Prompt(Shape):
    prompt: str


class Tokens(Shape):
    tokens: list[int]


class Healthy(Shape):
    status: Literal["ok"]
    slots_idle: int
    slots_processing: int
    requests_waiting: int


class Unhealthy(OpenShape):
    status: Literal["loading", "error"]
    reason: str | None = None


SSE = "text/event-stream"


def _errors(*statuses: int) -> dict[int | str, Reply]:
    what = {
        400: "A malformed request (OpenAI's error shape, naming the parameter).",
        401: "Missing or wrong API key (when the server has one).",
        404: "The model is not served here.",
        413: "The request body is larger than --max-body-bytes.",
        429: "Too many requests from this client (per minute or at once).",
        503: "The model is loading, or the queue is full.",
        504: "The generation did not finish within --request-timeout.",
    }
    headers = {429: ("Retry-After",), 503: ("Retry-After",)}
    return {s: Reply(what[s], ErrorResponse, headers=headers.get(s, ())) for s in statuses}


def operations(
    chat_request: type[Sampling],
    completion_request: type[Sampling],
    *,
    embeddings: bool,
    embedding: type[EmbeddingRequest] = EmbeddingRequest,
) -> list[Operation]:
    """The server's operations; /v1/embeddings only when it serves them (--embeddings)."""
    completion_errors = _errors(400, 401, 404, 413, 429, 503, 504)
    embedding_operation = Operation(
        "/v1/embeddings",
        "POST",
        "Embeddings (pooled, L2-normalised) of strings or token ids",
        {200: Reply("The embeddings", EmbeddingList), **_errors(400, 401, 404, 413, 429, 503)},
        request=embedding,
    )
    return [
        Operation(
            "/v1/chat/completions",
            "POST",
            "Chat completion",
            {
                200: Reply(
                    "The completion; with `stream: true` a text/event-stream of ChatCompletionChunk "
                    "events ending with `data: [DONE]`.",
                    ChatCompletion,
                    headers=("X-Request-Id",),
                    also=(SSE,),
                ),
                **completion_errors,
            },
            request=chat_request,
        ),
        Operation(
            "/v1/completions",
            "POST",
            "Text completion",
            {
                200: Reply(
                    "The completion; with `stream: true` a text/event-stream of CompletionChunk events.",
                    Completion,
                    headers=("X-Request-Id",),
                    also=(SSE,),
                ),
                **completion_errors,
            },
            request=completion_request,
        ),
        *([embedding_operation] if embeddings else []),
        Operation(
            "/v1/models", "GET", "The model served", {200: Reply("The list", ModelList), **_errors(401, 503)}
        ),
        Operation(
            "/props",
            "GET",
            "What the server resolved at start (llama-server's /props)",
            {200: Reply("The properties", Props), **_errors(401, 503)},
        ),
        Operation(
            "/apply-template",
            "POST",
            "The prompt text a chat request's messages become",
            {200: Reply("The prompt", Prompt), **_errors(400, 401, 413, 429, 503)},
            request=ApplyTemplateRequest,
        ),
        Operation(
            "/tokenize",
            "POST",
            "Token ids of a text",
            {200: Reply("The tokens", Tokens), **_errors(400, 401, 413, 429, 503)},
            request=TokenizeRequest,
        ),
        Operation(
            "/health",
            "GET",
            "Health",
            {200: Reply("Serving", Healthy), 503: Reply("Loading, or failed", Unhealthy)},
            secured=False,
        ),
        Operation(
            "/metrics",
            "GET",
            "Prometheus metrics",
            {200: Reply("Prometheus text format", media="text/plain"), **_errors(401)},
        ),
        Operation(
            "/openapi.json",
            "GET",
            "This document",
            {200: Reply("OpenAPI 3.1", schema={"type": "object"}), **_errors(401)},
        ),
    ]


STREAM_MODELS: list[type[Shape]] = [ChatCompletionChunk, CompletionChunk]
