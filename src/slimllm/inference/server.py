"""`slimllm serve`: configuration, model resolution and the uvicorn process around the API."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from slimllm import presets
from slimllm.clitypes import (
    DEFAULT_MAX_TOKENS,
    MAX_BODY_BYTES,
    TEMPLATE_TIMEOUT,
    ClientSettings,
    client_networks,
    client_options,
    max_body_option,
    read_key,
)
from slimllm.errors import UserError
from slimllm.hosts import LOCAL_ONLY, AllowedHosts
from slimllm.httpserver import HEADER_TIMEOUT, IDLE_TIMEOUT, connection_options, server_options
from slimllm.model import (
    DEFAULT_MODELS_DIR,
    ModelError,
    ModelSource,
    check_gguf,
    fetch,
    parse_source,
    sha256_file,
)


def _resolve_preset(ctx: click.Context, preset: str | None, options: dict[str, Any]) -> None:
    """Fill the options the user did not give from the preset, by the rules of `slimllm.presets`."""
    by_env = {p.envvar: p for p in ctx.command.params if isinstance(p.envvar, str) and p.name in options}
    given_sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    given = {
        env: str(options[p.name])
        for env, p in by_env.items()
        if p.name and ctx.get_parameter_source(p.name) in given_sources and options[p.name] is not None
    }
    try:
        chosen = presets.resolve(preset, given)
    except presets.PresetError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--preset' / SLIMLLM_PRESET") from None
    for env, raw in chosen.items():
        param = by_env.get(env)
        if param is None or not param.name:
            raise click.BadParameter(
                f"preset {preset}: unknown setting {env}", ctx=ctx, param_hint="'--preset' / SLIMLLM_PRESET"
            )
        options[param.name] = param.type_cast_value(ctx, raw)


@click.command("serve")
@click.option(
    "--preset",
    envvar="SLIMLLM_PRESET",
    show_envvar=True,
    help="Model preset: default, phi, qwen, llama, or a path to an .env file. Its settings fill what "
    "is not given; its alias and chat format apply only to its own model. Without one, the "
    "embedded default model gets the `default` preset.",
)
@click.option(
    "--model",
    "model_source",
    default="default",
    envvar="SLIMLLM_MODEL",
    show_envvar=True,
    help="`default` (embedded Gemma 3 270M), a .gguf path, or a Hugging Face repo id with --model-file.",
)
@click.option(
    "--model-file",
    envvar="SLIMLLM_MODEL_FILE",
    show_envvar=True,
    help="File in the Hugging Face repo (e.g., qwen2.5-3b-instruct-q4_k_m.gguf).",
)
@click.option(
    "--model-revision",
    envvar="SLIMLLM_MODEL_REVISION",
    show_envvar=True,
    help="Branch, tag or commit of the Hugging Face repo.",
)
@click.option(
    "--model-sha256",
    envvar="SLIMLLM_MODEL_SHA256",
    show_envvar=True,
    help="Expected sha256 of the GGUF; a mismatch stops the server at start.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_MODELS_DIR,
    envvar="SLIMLLM_MODELS_DIR",
    show_envvar=True,
    help="Where downloaded and embedded models are kept.",
)
@click.option(
    "--model-alias",
    envvar="SLIMLLM_MODEL_ALIAS",
    show_envvar=True,
    help="Model id served in /v1/models (default: the GGUF's file name without .gguf).",
)
@click.option(
    "--ctx-size",
    type=click.IntRange(min=0),
    default=4096,
    envvar="SLIMLLM_CTX_SIZE",
    show_envvar=True,
    help="Context size per slot in tokens; 0 uses the model's training context.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    envvar="SLIMLLM_THREADS",
    show_envvar=True,
    show_default="all available CPUs",
    help="CPU threads for llama.cpp.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=8),
    default=512,
    envvar="SLIMLLM_BATCH_SIZE",
    show_envvar=True,
    help="Tokens per llama_decode call (prompt processing chunk).",
)
@click.option(
    "--slots",
    type=click.IntRange(min=1, max=64),
    default=1,
    envvar="SLIMLLM_SLOTS",
    show_envvar=True,
    help="Requests decoded together; each slot gets --ctx-size tokens.",
)
@click.option(
    "--batch-invariant/--no-batch-invariant",
    default=True,
    envvar="SLIMLLM_BATCH_INVARIANT",
    show_envvar=True,
    help="With more than one slot: a request's text at temperature 0 does not depend on the "
    "requests batched with it (keys cached as Q8_0, no weight repacking).",
)
@click.option(
    "--embeddings/--no-embeddings",
    default=False,
    envvar="SLIMLLM_EMBEDDINGS",
    show_envvar=True,
    help="Serve POST /v1/embeddings (a second, --batch-size-token context next to the slots).",
)
@click.option(
    "--pooling",
    type=click.Choice(["mean", "cls", "last"]),
    envvar="SLIMLLM_POOLING",
    show_envvar=True,
    help="How /v1/embeddings pools the token vectors; default: the model's own, else mean.",
)
@click.option(
    "--chat-format",
    envvar="SLIMLLM_CHAT_FORMAT",
    show_envvar=True,
    help="A llama.cpp built-in chat template by name (e.g., gemma, chatml, llama3, phi3); "
    "default: the template in the GGUF.",
)
@click.option(
    "--chat-template-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_CHAT_TEMPLATE_FILE",
    show_envvar=True,
    help="A Jinja chat template file; overrides --chat-format and the GGUF's template.",
)
@click.option(
    "--template-timeout",
    type=click.FloatRange(min=0.01),
    default=TEMPLATE_TIMEOUT,
    envvar="SLIMLLM_TEMPLATE_TIMEOUT",
    show_envvar=True,
    help="Seconds a Jinja chat template may take to render one request; longer gets 400 (a loop "
    "in a GGUF's template would otherwise hold a worker thread).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    envvar="SLIMLLM_HOST",
    show_envvar=True,
    help="Address to listen on (0.0.0.0 in the container).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    envvar="SLIMLLM_PORT",
    show_envvar=True,
    help="Port to listen on.",
)
@connection_options("SLIMLLM")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_API_KEY_FILE",
    show_envvar=True,
    help="File holding the API key (e.g., a Docker secret). The key itself "
    "can be given as SLIMLLM_API_KEY; it is never accepted on the command line. At least 24 characters.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=0),
    default=16,
    envvar="SLIMLLM_QUEUE_SIZE",
    show_envvar=True,
    help="Requests that may wait for a free slot; more get 503 with Retry-After.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=2048,
    envvar="SLIMLLM_MAX_TOKENS_LIMIT",
    show_envvar=True,
    help="Most tokens one request may generate: a larger max_tokens gets 400.",
)
@click.option(
    "--default-max-tokens",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_TOKENS,
    envvar="SLIMLLM_DEFAULT_MAX_TOKENS",
    show_envvar=True,
    help="Most tokens a chat request without max_tokens generates (at most --max-tokens-limit); "
    "a text completion without one gets 16, as OpenAI's.",
)
@max_body_option("SLIMLLM_MAX_BODY_BYTES")
@click.option(
    "--rate-limit",
    type=click.IntRange(min=0),
    default=30,
    envvar="SLIMLLM_RATE_LIMIT",
    show_envvar=True,
    help="Requests a minute one public client may make to the generation and text routes (0: no "
    "limit); more get 429 with Retry-After. An IPv6 client is its /64.",
)
@click.option(
    "--max-requests-per-client",
    type=click.IntRange(min=0),
    default=2,
    envvar="SLIMLLM_MAX_REQUESTS_PER_CLIENT",
    show_envvar=True,
    help="Requests one public client may have in flight (or waiting) at once (0: no limit); more get 429.",
)
@client_options("SLIMLLM_")
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    envvar="SLIMLLM_REQUEST_TIMEOUT",
    show_envvar=True,
    help="Seconds a request may take in total.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=30.0,
    envvar="SLIMLLM_SHUTDOWN_GRACE",
    show_envvar=True,
    help="Seconds in-flight requests get to finish after SIGTERM.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    envvar="SLIMLLM_LOG_LEVEL",
    show_envvar=True,
    help="Log verbosity.",
)
@click.pass_context
def serve(ctx: click.Context, /, preset: str | None, **options: Any) -> None:
    """Serve a GGUF model over an OpenAI-compatible HTTP API.

    Routes: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings (with
    --embeddings), GET /v1/models, GET /props,
    POST /apply-template, POST /tokenize, GET /health, GET /metrics (Prometheus). With an API key
    set, every route but /health needs `Authorization: Bearer <key>`.
    """
    _resolve_preset(ctx, preset, options)
    _serve(**options)


def _serve(
    model_source: str,
    model_file: str | None,
    model_revision: str | None,
    model_sha256: str | None,
    models_dir: Path,
    model_alias: str | None,
    ctx_size: int,
    threads: int | None,
    batch_size: int,
    slots: int,
    batch_invariant: bool,
    embeddings: bool,
    pooling: str | None,
    chat_format: str | None,
    chat_template_file: Path | None,
    template_timeout: float,
    host: str,
    port: int,
    allowed_hosts: AllowedHosts,
    header_timeout: float,
    idle_timeout: int,
    api_key_file: Path | None,
    queue_size: int,
    max_tokens_limit: int,
    default_max_tokens: int,
    max_body_bytes: int,
    rate_limit: int,
    max_requests_per_client: int,
    trusted_proxies: str,
    local_clients: str,
    max_in_flight: int,
    max_waiting: int,
    request_timeout: float,
    shutdown_grace: float,
    log_level: str,
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = read_key("SLIMLLM_API_KEY", api_key_file)
    proxies, local = client_networks("SLIMLLM_", trusted_proxies, local_clients)
    template = None
    if chat_template_file is not None:
        try:
            template = chat_template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read chat template {chat_template_file}: {exc}") from None
    try:
        source = parse_source(model_source, filename=model_file, revision=model_revision, sha256=model_sha256)
        model_id = model_alias or source.target_name.removesuffix(".gguf")
    except ModelError as exc:
        raise UserError(str(exc)) from None
    raise SystemExit(
        run_server(
            # Fetching happens in the loader, after the server listens, so /health reports
            # "loading" during a download instead of refusing connections.
            load_model=lambda: resolve_model(source, models_dir),
            model_id=model_id,
            api_key=api_key,
            host=host,
            port=port,
            allowed_hosts=allowed_hosts,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
            engine_options={
                "ctx_size": ctx_size,
                "threads": threads,
                "batch_size": batch_size,
                "slots": slots,
                "batch_invariant": batch_invariant,
                "embeddings": embeddings,
                "pooling": pooling,
                "queue_size": queue_size,
                "chat_format": chat_format,
                "chat_template": template,
                "chat_template_origin": str(chat_template_file),
            },
            request_timeout=request_timeout,
            shutdown_grace=shutdown_grace,
            log_level=log_level,
            max_tokens_limit=max_tokens_limit,
            default_max_tokens=default_max_tokens,
            max_body_bytes=max_body_bytes,
            template_timeout=template_timeout,
            clients=ClientSettings(
                rate_limit, max_requests_per_client, max_in_flight, max_waiting, proxies, local
            ),
        )
    )


def resolve_model(source: ModelSource, models_dir: Path) -> Path:
    """A verified GGUF path. Local files are used where they are; other sources go to models_dir."""
    if source.kind == "path":
        assert source.path is not None
        check_gguf(source.path)
        if source.sha256 and sha256_file(source.path) != source.sha256:
            raise ModelError(f"sha256 mismatch for {source.path}: expected {source.sha256}")
        return source.path
    return fetch(source, models_dir)


def run_server(
    *,
    load_model: Callable[[], Path],
    model_id: str,
    api_key: str | None,
    host: str,
    port: int,
    engine_options: dict[str, Any],
    request_timeout: float,
    shutdown_grace: float,
    log_level: str,
    max_tokens_limit: int = 2048,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    max_body_bytes: int = MAX_BODY_BYTES,
    allowed_hosts: AllowedHosts = LOCAL_ONLY,
    header_timeout: float = HEADER_TIMEOUT,
    idle_timeout: int = IDLE_TIMEOUT,
    template_timeout: float = TEMPLATE_TIMEOUT,
    clients: ClientSettings | None = None,
) -> int:
    import uvicorn

    from slimllm.inference.api import Settings, create_app
    from slimllm.inference.engine import Engine

    outcome = {"code": 0}
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        outcome["code"] = 1
        if server is not None:
            server.should_exit = True

    app = create_app(
        Settings(
            model_id=model_id,
            api_key=api_key,
            request_timeout=request_timeout,
            max_tokens_limit=max_tokens_limit,
            default_max_tokens=default_max_tokens,
            max_body_bytes=max_body_bytes,
            allowed_hosts=allowed_hosts,
            embeddings=bool(engine_options.get("embeddings")),
            template_timeout=template_timeout,
            clients=clients or ClientSettings(),
        ),
        load=lambda: Engine(load_model(), **engine_options),
        on_fatal=on_fatal,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(shutdown_grace) or None,
        **server_options(header_timeout=header_timeout, idle_timeout=idle_timeout),
    )
    server = uvicorn.Server(config)
    server.run()
    return outcome["code"]
