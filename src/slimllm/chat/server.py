"""`slimllm chat-interface`: configuration and the uvicorn process around the chat app."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from slimllm.chat.config import ConfigError, load_models
from slimllm.clitypes import (
    GATEWAY_DEFAULT_MAX_TOKENS,
    client_networks,
    client_options,
    max_body_option,
    read_key,
)
from slimllm.errors import UserError
from slimllm.hosts import AllowedHosts
from slimllm.httpserver import connection_options, server_options


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
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_CHAT_API_KEY_FILE",
    show_envvar=True,
    help="File holding the chat's own API key (e.g., a Docker secret); the key itself can be given "
    "as SLIMLLM_CHAT_API_KEY, never on the command line; at least 24 characters. With a key, every "
    "route but /health and /login needs it: a bearer token, or the session cookie of the login form.",
)
@max_body_option("SLIMLLM_CHAT_MAX_BODY_BYTES")
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=1024,
    envvar="SLIMLLM_CHAT_MAX_TOKENS_LIMIT",
    show_envvar=True,
    help="Most tokens one answer may have: a larger max_tokens gets 400.",
)
@click.option(
    "--default-max-tokens",
    type=click.IntRange(min=1),
    default=GATEWAY_DEFAULT_MAX_TOKENS,
    envvar="SLIMLLM_CHAT_DEFAULT_MAX_TOKENS",
    show_envvar=True,
    help="max_tokens sent for a request that gives none (at most --max-tokens-limit).",
)
@click.option(
    "--max-streams-per-client",
    type=click.IntRange(min=0),
    default=2,
    envvar="SLIMLLM_CHAT_MAX_STREAMS_PER_CLIENT",
    show_envvar=True,
    help="Chat requests one public client may have in flight (or waiting) at once (0: no limit); "
    "more get 429.",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(min=0),
    default=30,
    envvar="SLIMLLM_CHAT_RATE_LIMIT",
    show_envvar=True,
    help="Chat requests a minute one public client may make (0: no limit); more get 429 with "
    "Retry-After. An IPv6 client is its /64.",
)
@connection_options("SLIMLLM_CHAT")
@client_options("SLIMLLM_CHAT_")
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
    api_key_file: Path | None,
    max_body_bytes: int,
    max_tokens_limit: int,
    default_max_tokens: int,
    max_streams_per_client: int,
    rate_limit: int,
    trusted_proxies: str,
    allowed_hosts: AllowedHosts,
    header_timeout: float,
    idle_timeout: int,
    local_clients: str,
    max_in_flight: int,
    max_waiting: int,
    log_level: str,
) -> None:
    """Serve the chat page and API in front of OpenAI-compatible backends.

    Routes: GET / (the page), GET /status, GET /api/models, POST /api/chat/stream,
    GET /v1/models and POST /v1/chat/completions (an OpenAI-compatible gateway: `model` picks
    the backend), GET /health, GET /api/badge/<model> (a shields.io endpoint), GET /openapi.json,
    GET|POST /login, POST /logout. A model's API key is read from SLIMLLM_CHAT_KEY_<NAME> (or the
    variable its file entry names), never from the command line; so is the chat's own key
    (SLIMLLM_CHAT_API_KEY).
    """
    try:
        configs = load_models(models_spec, models_file, os.environ)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    api_key = read_key("SLIMLLM_CHAT_API_KEY", api_key_file)
    proxies, local = client_networks("SLIMLLM_CHAT_", trusted_proxies, local_clients)
    try:
        import uvicorn

        from slimllm.chat.app import Protection, create_app
        from slimllm.chat.backends import Registry
    except ImportError as exc:
        raise UserError(f"the chat interface needs its extra: pip install 'slimllm[chat]' ({exc})") from None

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry(configs, poll_interval=poll_interval, request_timeout=request_timeout)
    config = uvicorn.Config(
        create_app(
            registry,
            keepalive=keepalive,
            protection=Protection(
                api_key=api_key,
                max_body_bytes=max_body_bytes,
                max_tokens_limit=max_tokens_limit,
                default_max_tokens=default_max_tokens,
                max_streams_per_client=max_streams_per_client,
                rate_limit=rate_limit,
                trusted_proxies=proxies,
                local_clients=local,
                max_in_flight=max_in_flight,
                max_waiting=max_waiting,
                allowed_hosts=allowed_hosts,
            ),
        ),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # Connections still open this long after SIGTERM are cut (sse-starlette ends chat streams
        # at once; gateway streams get the time to finish).
        timeout_graceful_shutdown=5,
        **server_options(header_timeout=header_timeout, idle_timeout=idle_timeout),
    )
    uvicorn.Server(config).run()
