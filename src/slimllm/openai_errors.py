"""Errors in the OpenAI API's shape, shared by the inference server and the chat gateway."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Handler = Callable[[Request, Exception], Awaitable[Response]]


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def exception_handlers(log: logging.Logger) -> dict[type[Exception], Handler]:
    """Starlette handlers that answer every error, ours, routing's and bugs', in OpenAI's shape."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # Its headers too: a 405's Allow (RFC 9110) lists the route's methods.
        headers = dict(exc.headers or {})
        return ApiError(exc.status_code, str(exc.detail), kind=kind, headers=headers).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log, never to the client.
        log.exception("unhandled error on %s", request.url.path)
        return ApiError(500, "internal server error", kind="server_error").response()

    return {ApiError: api_error, HTTPException: http_error, Exception: server_error}


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 in OpenAI's shape."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body
