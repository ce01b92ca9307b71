"""The backends behind the chat interface: health polling, instance choice and failover.

A model has one or more instances (base URLs of OpenAI-compatible servers). A background task
asks every instance's `/health` each poll interval. A request goes to the healthy instance with
the fewest requests in flight, taking turns among equals; an instance that refuses the connection
or answers 502/503/504 is skipped for the next one, so the user sees an error only when no
instance is left. An instance that cannot be reached is also marked down at once, without waiting
for the next poll, and gets requests again once a health check passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
from httpx_sse import EventSource

from slimllm.chat.config import ModelConfig

log = logging.getLogger("slimllm.chat")

InstanceState = Literal["ok", "loading", "down", "unknown"]
ModelStatus = Literal["up", "loading", "down", "unknown"]

CONNECT_TIMEOUT = 5.0
# Not tied to the poll interval: on a busy machine a short poll interval must not turn slow
# answers into "down". Checks never overlap; a slow one only delays the next poll.
HEALTH_TIMEOUT = 5.0
# Statuses meaning "this instance cannot take the request now, another one may": bad gateway,
# loading or queue full, gateway timeout. Other errors are the request's, and go to the caller.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass
class Instance:
    index: int  # 1-based position in the model's configuration; URLs are never published
    url: str
    state: InstanceState = "unknown"
    latency_ms: float | None = None
    reason: str | None = None
    checked_at: float | None = None  # wall-clock time of the last health check
    in_flight: int = 0
    upstream_model: str | None = None
    # Whether the backend serves /v1/embeddings (a slimllm server says so in /v1/models' meta;
    # another is taken to): None until its first successful health check.
    embeddings: bool | None = None

    def mark(self, state: InstanceState, reason: str | None = None, latency_ms: float | None = None) -> None:
        if state != self.state:
            log.info("instance %d of %s: %s -> %s (%s)", self.index, self.url, self.state, state, reason)
        self.state, self.reason, self.latency_ms = state, reason, latency_ms
        self.checked_at = time.time()

    def public(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.state,
            "latency_ms": self.latency_ms,
            "reason": self.reason,
            "checked_at": self.checked_at,
            "in_flight": self.in_flight,
        }


@dataclass
class Model:
    config: ModelConfig
    instances: list[Instance] = field(default_factory=list)
    _turn: int = 0

    @classmethod
    def from_config(cls, config: ModelConfig) -> Model:
        return cls(config, [Instance(i, url) for i, url in enumerate(config.urls, 1)])

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def status(self) -> ModelStatus:
        states = {i.state for i in self.instances}
        if "ok" in states:
            return "up"
        if "loading" in states:
            return "loading"
        if "unknown" in states:
            return "unknown"
        return "down"

    @property
    def latency_ms(self) -> float | None:
        found = [i.latency_ms for i in self.instances if i.state == "ok" and i.latency_ms is not None]
        return min(found) if found else None

    @property
    def embeddings(self) -> bool:
        """Some instance serves embeddings (or has not said yet that it does not)."""
        return any(i.embeddings is not False for i in self.instances)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def candidates(self) -> list[Instance]:
        """The order in which a request tries the instances.

        Healthy ones first, least busy first, taking turns among equally busy ones; then those
        not checked yet and those still loading (whose 503 tells the caller why). Down ones are
        left out until a health check passes again.
        """
        ok = [i for i in self.instances if i.state == "ok"]
        if ok:
            start = self._turn % len(ok)
            self._turn += 1
            ok = sorted(ok[start:] + ok[:start], key=lambda i: i.in_flight)
        rest = [i for i in self.instances if i.state in ("unknown", "loading")]
        return ok + rest

    def summary(self) -> str:
        """Why the model is down, for error messages: one reason per instance."""
        reasons = [f"instance {i.index}: {i.reason or i.state}" for i in self.instances]
        return "; ".join(reasons)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "instances": [i.public() for i in self.instances],
        }


class NoInstance(Exception):
    """No instance of the model can take a request; the message says why."""


class UpstreamStatus(Exception):
    """Every instance tried answered with a retryable error status; this is the last answer."""

    def __init__(self, status: int, body: bytes, headers: httpx.Headers) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body, self.headers = status, body, headers


@dataclass
class Upstream:
    """An open response from one instance. close() must be called exactly once."""

    instance: Instance
    response: httpx.Response

    async def close(self) -> None:
        self.instance.in_flight -= 1
        # Shielded: this runs in `finally` blocks of cancelled streams (the user stopped or left),
        # and the backend only notices the disconnect once the connection is really closed.
        with anyio.CancelScope(shield=True):
            await self.response.aclose()


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_message(status: int, body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else a short form of the body."""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return str(error["message"])
            if isinstance(data.get("reason"), str):
                return str(data["reason"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")


class Registry:
    """The configured models and their instances' health; one per app."""

    def __init__(self, configs: list[ModelConfig], *, poll_interval: float, request_timeout: float) -> None:
        self.models = {c.name: Model.from_config(c) for c in configs}
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the registry is not started")
        return self._client

    def get(self, name: object) -> Model | None:
        return self.models.get(name) if isinstance(name, str) else None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT),
            # Many streams to the same few backends at once: no pool limit to queue them behind.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        self._poller = asyncio.create_task(self._poll_forever(), name="chat-health-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._client is not None:
            await self._client.aclose()

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_interval)

    async def poll_once(self) -> None:
        checks = [self._check(m, i) for m in self.models.values() for i in m.instances]
        await asyncio.gather(*checks)

    async def _check(self, model: Model, instance: Instance) -> None:
        start = time.monotonic()
        try:
            response = await self.client.get(
                instance.url + "/health", headers=model.headers, timeout=HEALTH_TIMEOUT
            )
            if response.status_code == 404:
                # Servers without /health (Ollama, some proxies): a model list means "serving".
                response = await self.client.get(
                    instance.url + "/v1/models", headers=model.headers, timeout=HEALTH_TIMEOUT
                )
        except httpx.HTTPError as exc:
            instance.mark("down", describe(exc))
            return
        except Exception as exc:  # never let one odd backend stop the poller
            log.exception("health check of %s failed", instance.url)
            instance.mark("down", describe(exc))
            return
        latency = round((time.monotonic() - start) * 1000, 1)
        if response.status_code == 200:
            if instance.embeddings is None or (
                model.config.upstream_model is None and instance.upstream_model is None
            ):
                await self._discover_model(model, instance)
            instance.mark("ok", None, latency)
            return
        reason = error_message(response.status_code, response.content)
        status = _json_field(response, "status")
        instance.mark("loading" if status == "loading" else "down", reason)

    async def _discover_model(self, model: Model, instance: Instance) -> None:
        """The backend's own model id (the first one it lists), to send as `model`, and whether
        it serves embeddings."""
        try:
            response = await self.client.get(
                instance.url + "/v1/models", headers=model.headers, timeout=HEALTH_TIMEOUT
            )
            if response.status_code != 200:
                return
            data = response.json()["data"]
            if not data:
                return
            if model.config.upstream_model is None:
                instance.upstream_model = str(data[0]["id"])
            meta = data[0].get("meta")
            served = meta.get("embeddings") if isinstance(meta, dict) else None
            instance.embeddings = served if isinstance(served, bool) else True
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return

    def _body_for(self, model: Model, instance: Instance, body: dict[str, Any]) -> dict[str, Any]:
        upstream = model.config.upstream_model or instance.upstream_model
        out = {k: v for k, v in body.items() if k != "model"}
        if upstream:
            out["model"] = upstream
        return out

    async def connect(self, model: Model, path: str, body: dict[str, Any]) -> Upstream:
        """POST `body` to the first instance that takes it; the response is streamed.

        Raises NoInstance when no instance could be reached, UpstreamStatus when every instance
        reached answered with a retryable error status.
        """
        last_status: UpstreamStatus | None = None
        tried = 0
        for instance in model.candidates():
            tried += 1
            request = self.client.build_request(
                "POST", instance.url + path, json=self._body_for(model, instance, body), headers=model.headers
            )
            try:
                response = await self.client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                log.warning("instance %d of %s failed, trying the next: %s", instance.index, model.name, exc)
                instance.mark("down", describe(exc))
                continue
            if response.status_code in RETRY_STATUSES:
                body_bytes = await response.aread()
                await response.aclose()
                last_status = UpstreamStatus(response.status_code, body_bytes, response.headers)
                log.warning(
                    "instance %d of %s answered %d, trying the next",
                    instance.index,
                    model.name,
                    response.status_code,
                )
                continue
            instance.in_flight += 1
            return Upstream(instance, response)
        if last_status is not None:
            raise last_status
        count = len(model.instances)
        if tried == 0:
            raise NoInstance(
                f"model '{model.name}' is down: no healthy instance of {count} ({model.summary()})"
            )
        raise NoInstance(f"model '{model.name}' is down: no instance of {count} answered ({model.summary()})")


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event in a response (httpx-sse's parser)."""
    async for event in EventSource(response).aiter_sse():
        yield event.data


def _json_field(response: httpx.Response, key: str) -> object:
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None
