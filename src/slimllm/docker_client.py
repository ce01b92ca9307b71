"""The Docker engine, through the docker SDK (the `docker` extra)."""

from __future__ import annotations

import importlib
from typing import Any


class EngineError(Exception):
    """No docker SDK, or no engine answering; the message is one line for the user."""


def docker_client(timeout: int = 300) -> Any:
    try:
        # Through importlib: run from the repository root, mypy would take its docker/ folder for the SDK.
        docker: Any = importlib.import_module("docker")
    except ImportError:
        raise EngineError("the docker SDK is needed: pip install 'slimllm[docker]'") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        raise EngineError(f"no Docker engine answers: {exc}") from None
    return client


def engine_refusal(exc: BaseException) -> str | None:
    """The engine's own explanation when `exc` is a docker SDK error; None for anything else."""
    try:
        errors: Any = importlib.import_module("docker.errors")
    except ImportError:
        return None
    if isinstance(exc, errors.DockerException):
        return str(getattr(exc, "explanation", None) or exc)
    return None
