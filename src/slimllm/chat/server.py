"""`slimllm chat-interface`: configuration and the uvicorn process around the chat app."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from slimllm.chat.config import ConfigError, load_models
from slimllm.errors import UserError


@click.command("chat-interface")
@click.option(
    "--models",
    "models_spec",
    envvar="SLIMLLM_CHAT_MODELS",
    show_envvar=True,
    help="Models and their instances: `name=url[,url...]`, entries separated by `;` "
    "(e.g., gemma=http://inference-1:8080,http://inference-2:8080;phi=http://phi:8080).",
)
@click.option(
    "--models-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_CHAT_MODELS_FILE",
    show_envvar=True,
    help='JSON file of models: {"models": {"<name>": {"urls": [...], "model": "<backend id>", '
    '"api_key_env": "<VARIABLE>"}}}; combined with --models.',
)
@click.option(
    "--host",
    default="127.0.0.1",
    envvar="SLIMLLM_CHAT_HOST",
    show_envvar=True,
    help="Address to listen on (0.0.0.0 in the container).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    envvar="SLIMLLM_CHAT_PORT",
    show_envvar=True,
    help="Port to listen on.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.5),
    default=10.0,
    envvar="SLIMLLM_CHAT_POLL_INTERVAL",
    show_envvar=True,
    help="Seconds between health checks of every instance.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    envvar="SLIMLLM_CHAT_REQUEST_TIMEOUT",
    show_envvar=True,
    help="Seconds a backend may take to answer one request in full.",
)
@click.option(
    "--keepalive",
    type=click.FloatRange(min=0.5),
    default=15.0,
    envvar="SLIMLLM_CHAT_KEEPALIVE",
    show_envvar=True,
    help="Seconds between keep-alive comments on chat streams, which keep proxies from closing "
    "a stream while the models are slow to answer.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    envvar="SLIMLLM_CHAT_LOG_LEVEL",
    show_envvar=True,
    help="Log verbosity.",
)
def chat_interface(
    models_spec: str | None,
    models_file: Path | None,
    host: str,
    port: int,
    poll_interval: float,
    request_timeout: float,
    keepalive: float,
    log_level: str,
) -> None:
    """Serve the chat page and API in front of OpenAI-compatible backends.

    Routes: GET / (the page), GET /status, GET /api/models, POST /api/chat/stream,
    GET /v1/models and POST /v1/chat/completions (an OpenAI-compatible gateway: `model` picks
    the backend), GET /health, GET /api/badge/<model> (a shields.io endpoint). A model's API key
    is read from SLIMLLM_CHAT_KEY_<NAME> (or the variable its file entry names), never from the
    command line.
    """
    try:
        configs = load_models(models_spec, models_file, os.environ)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    try:
        import uvicorn

        from slimllm.chat.app import create_app
        from slimllm.chat.backends import Registry
    except ImportError as exc:
        raise UserError(f"the chat interface needs its extra: pip install 'slimllm[chat]' ({exc})") from None

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry(configs, poll_interval=poll_interval, request_timeout=request_timeout)
    config = uvicorn.Config(
        create_app(registry, keepalive=keepalive),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        # Connections still open this long after SIGTERM are cut (sse-starlette ends chat streams
        # at once; gateway streams get the time to finish).
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
