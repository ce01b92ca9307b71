"""Typed request and response models (pydantic) and the OpenAPI 3.1 documents made from them.

Each app lists its operations once (`Operation`: path, method, request model, responses); the
same list gives `/openapi.json`, and the request models validate the bodies the routes read
(`parse`), so the document and the validation cannot drift apart. A validation failure becomes
one 400 in OpenAI's error shape naming the parameter (`messages[0].role`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from slimllm.openai_errors import ApiError

M = TypeVar("M", bound=BaseModel)
JsonSchemaMode = Literal["validation", "serialization"]


def integral(value: Any) -> Any:
    """An integer written as a float (`3891436076.0`) is that integer: JSON has one kind of
    number, and JSON Schema's `integer` is any number without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A request body's integer (strict mode otherwise refuses 3.0); the optional one takes Field
# bounds outside (they become the JSON Schema's minimum/maximum).
Integer = Annotated[int, BeforeValidator(integral)]
OptionalInteger = Annotated[int | None, BeforeValidator(integral)]
NonNegativeInteger = Annotated[int, Field(ge=0), BeforeValidator(integral)]  # bounds first: minimum


class Body(BaseModel):
    """A request body: JSON types as they are (no "1" for 1), unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Shape(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="forbid")


class OpenShape(BaseModel):
    """A response object that may carry more keys than documented."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(Shape):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Shape):
    """OpenAI's error shape."""

    error: ErrorDetail


# Codes of ApiError for pydantic's error kinds; the rest are "invalid_value".
_TYPE_ERRORS = ("_type", "_parsing", "model_attributes_type", "union_tag_invalid", "dict_type", "list_type")
UNSUPPORTED = "unsupported"


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "literal[")) or part in ("str", "int", "float"):
            continue  # union branch names, not fields
        elif part.startswith("list[") or "=" in part:
            continue  # "role=tool": a tagged union's tag (inference.schemas.Message)
        else:
            out += f".{part}" if out else part
    return out


def parse(model: type[M], body: dict[str, Any], *, unsupported: frozenset[str] = frozenset()) -> M:
    """`body` as `model`, or a 400 ApiError naming the first wrong parameter."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        # A union reports one error per branch; the first names the parameter well enough.
        first = errors[0]
        ctx = first.get("ctx") or {}
        # A custom error may name the field of the object it is about (the missing `content`).
        named = ".".join(str(p) for p in (_param(tuple(first["loc"])), ctx.get("field")) if p)
        param = named or None
        top = param.split(".")[0].split("[")[0] if param else ""
        if top in unsupported:
            code = UNSUPPORTED
            message = f"'{top}' is not supported by this server with that value"
        else:
            code = "invalid_type" if first["type"].endswith(_TYPE_ERRORS) else "invalid_value"
            message = f"'{param}': {first['msg']}" if param else str(first["msg"])
        if first["type"] == "missing":
            code = "missing_parameter"
            message = f"'{param}': {first['msg']}" if ctx.get("field") else f"'{param}' is required"
        elif first["type"] == "too_short" and (first.get("ctx") or {}).get("min_length") == 1:
            message = f"'{param}' must be a non-empty list"
        raise ApiError(400, message, param=param, code=code) from None


@dataclass(frozen=True)
class Reply:
    """One documented response: a JSON model, or another media type with a string schema."""

    description: str
    model: type[BaseModel] | None = None
    media: str | None = "application/json"  # None: no body
    headers: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None  # for a reply without a model
    also: tuple[str, ...] = ()  # other media types the same status may come as (a string each)


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    responses: dict[int | str, Reply]
    request: type[BaseModel] | None = None
    request_media: str = "application/json"
    secured: bool = True
    description: str = ""
    tags: tuple[str, ...] = ()
    parameters: list[dict[str, Any]] = field(default_factory=list)


# One event of a text/event-stream answer (what a client's SSE parser yields): each `data` of a
# completion stream is a JSON chunk (the *Chunk schemas), and the stream ends with `data: [DONE]`.
SSE = "text/event-stream"
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event.",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _media_schema(media: str) -> dict[str, Any]:
    return SSE_EVENT if media == SSE else {"type": "string"}


HEADER_DOCS = {
    "Retry-After": "Seconds to wait before trying again.",
    "X-Request-Id": "The completion's id.",
    "Set-Cookie": "The session cookie (HttpOnly, SameSite=Strict).",
    "Location": "Where the browser goes next.",
    "WWW-Authenticate": "How to authenticate: Bearer.",
}


def _operation_id(op: Operation) -> str:
    path = op.path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
    return f"{op.method.lower()}_{path or 'root'}"


# What the key check (slimllm.keys) may answer on every secured operation, whatever its route.
KEY_REPLIES = {
    400: "More than one Authorization header.",
    401: "No valid API key.",
    429: "Too many wrong keys from this client or on this server: the key's back-off.",
}


def _with_key_replies(responses: dict[int | str, Reply]) -> dict[int | str, Reply]:
    """`responses` and, where it has none of its own, each answer of the key check."""
    added: dict[int | str, Reply] = {
        status: Reply(text, ErrorResponse, headers=("Retry-After",) if status == 429 else ())
        for status, text in KEY_REPLIES.items()
        if status not in responses
    }
    return {**responses, **added}


def document(
    *,
    title: str,
    version: str,
    description: str,
    operations: list[Operation],
    security: dict[str, dict[str, Any]] | None = None,
    extra_models: Sequence[type[BaseModel]] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations` (JSON Schema 2020-12 components from the models)."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for op in operations:
        if op.request is not None:
            wanted.append((op.request, "validation"))
        wanted += [(r.model, "serialization") for r in op.responses.values() if r.model is not None]
    wanted += [(m, "serialization") for m in extra_models]
    unique = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": _operation_id(op),
            "responses": {},
        }
        if op.description:
            entry["description"] = op.description
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.parameters:
            entry["parameters"] = op.parameters
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {op.request_media: {"schema": refs[(op.request, "validation")]}},
            }
        replies = _with_key_replies(op.responses) if security is not None and op.secured else op.responses
        for status, reply in replies.items():
            if reply.model is not None:
                schema = refs[(reply.model, "serialization")]
            else:
                schema = reply.schema or _media_schema(reply.media or "")
            response: dict[str, Any] = {"description": reply.description}
            if reply.media is not None:
                response["content"] = {reply.media: {"schema": schema}}
                response["content"].update({media: {"schema": _media_schema(media)} for media in reply.also})
            if reply.headers:
                response["headers"] = {
                    name: {"description": HEADER_DOCS.get(name, name), "schema": {"type": "string"}}
                    for name in reply.headers
                }
            entry["responses"][str(status)] = response
        if security is not None:
            entry["security"] = [{name: []} for name in security] if op.secured else []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if security is not None:
        doc["components"]["securitySchemes"] = security
    return doc
