"""`slimllm stack up|plan|watch|handoff|down`: what the serve, keep-alive and stop actions run."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from slimllm import gha
from slimllm.clitypes import LINE, parse_pairs
from slimllm.errors import UserError
from slimllm.runner import compose, publish, released
from slimllm.runner.plan import models_dir as _models_dir
from slimllm.runner.plan import parse_duration, plan_models, preset_list
from slimllm.runner.stack import StackSettings, containers, docker, dump_logs, mask_secrets, remove, up
from slimllm.runner.watch import TUNNEL_URL_VARIABLE, drain, watch

_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@click.group()
def stack() -> None:
    """Run slimllm's containers on this host, as the serve action does."""


NAME_OPTION = click.option(
    "--name",
    envvar="SLIMLLM_STACK_NAME",
    show_envvar=True,
    default="slimllm",
    help="Stack name: container and network prefix (e.g., chat-1).",
)


def _options(*options: Callable[[FC], FC]) -> Callable[[FC], FC]:
    """Several click options as one decorator, for commands that share them."""

    def apply(command: FC) -> FC:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


# The models to serve and where they live: `stack up` starts them, `stack plan` keys their cache.
_MODEL_OPTIONS = _options(
    click.option(
        "--models",
        "presets",
        envvar="SLIMLLM_PRESETS",
        show_envvar=True,
        default="",
        help="Model presets, comma separated (e.g., default,qwen); default: 'default' unless --model-repo.",
    ),
    click.option(
        "--model-repo",
        envvar="SLIMLLM_MODEL_REPO",
        show_envvar=True,
        help="Hugging Face repo of one more model (e.g., Qwen/Qwen2.5-0.5B-Instruct-GGUF).",
    ),
    click.option(
        "--model-file",
        envvar="SLIMLLM_MODEL_FILE",
        show_envvar=True,
        help="GGUF file in that repo (e.g., qwen2.5-0.5b-instruct-q4_k_m.gguf).",
    ),
    click.option(
        "--model-revision",
        envvar="SLIMLLM_MODEL_REVISION",
        show_envvar=True,
        help="Branch, tag or commit of that repo.",
    ),
    click.option(
        "--models-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SLIMLLM_MODELS_DIR",
        show_envvar=True,
        help="Host directory of the models (default: RUNNER_TEMP/slimllm-models on a runner, or ./models).",
    ),
)


def _name(value: str) -> str:
    if not _STACK_NAME.fullmatch(value):
        raise UserError(f"stack name {value!r} must be 1-40 lowercase letters, digits or '-'")
    return value


@stack.command("up")
@NAME_OPTION
@_MODEL_OPTIONS
@click.option(
    "--model-sha256", envvar="SLIMLLM_MODEL_SHA256", show_envvar=True, help="Expected sha256 of that file."
)
@click.option(
    "--model-alias",
    envvar="SLIMLLM_MODEL_ALIAS",
    show_envvar=True,
    help="Name of that model in the API and the chat (default: its file name without .gguf).",
)
@click.option(
    "--chat-format",
    envvar="SLIMLLM_CHAT_FORMAT",
    show_envvar=True,
    help="A llama.cpp built-in chat template for that model instead of its GGUF's own (e.g., chatml).",
)
@click.option(
    "--chat/--no-chat",
    default=False,
    envvar="SLIMLLM_CHAT",
    show_envvar=True,
    help="Also start the chat interface in front of the models.",
)
@click.option(
    "--tunnel/--no-tunnel",
    default=False,
    envvar="SLIMLLM_TUNNEL",
    show_envvar=True,
    help="Publish the chat (or the first model) through cloudflared; TUNNEL_TOKEN picks a named tunnel.",
)
@click.option(
    "--public",
    default="false",
    envvar="SLIMLLM_PUBLIC",
    show_envvar=True,
    metavar="true|false",
    help="Publish through the tunnel without a key, open to anyone with the URL; without it a tunnel "
    "needs SLIMLLM_CHAT_API_KEY (with --chat) or SLIMLLM_API_KEY (without).",
)
@click.option(
    "--monitor/--no-monitor",
    default=True,
    envvar="SLIMLLM_MONITOR",
    show_envvar=True,
    help="Run the health monitor sidecar.",
)
@click.option(
    "--inference-image",
    default="",
    envvar="SLIMLLM_INFERENCE_IMAGE",
    show_envvar=True,
    help="Inference server image; default: the released one (--released-images), else a local build.",
)
@click.option(
    "--chat-image",
    default="",
    envvar="SLIMLLM_CHAT_IMAGE",
    show_envvar=True,
    help="Chat interface image; default as for --inference-image.",
)
@click.option(
    "--cloudflared-image",
    default="",
    envvar="SLIMLLM_CLOUDFLARED_IMAGE",
    show_envvar=True,
    help="Tunnel sidecar image; default as for --inference-image.",
)
@click.option(
    "--monitor-image",
    default="",
    envvar="SLIMLLM_MONITOR_IMAGE",
    show_envvar=True,
    help="Health monitor image; default as for --inference-image.",
)
@click.option(
    "--released-images",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_RELEASED_IMAGES",
    show_envvar=True,
    help="The release's images file (actions/serve/images.json); its images, pinned by digest, are "
    "the default of every image option.",
)
@click.option(
    "--port",
    type=click.IntRange(1024, 65000),
    default=8080,
    envvar="SLIMLLM_PORT",
    show_envvar=True,
    help="Host port (127.0.0.1) of the first model; the next models take the next ports.",
)
@click.option(
    "--chat-port",
    type=click.IntRange(1024, 65535),
    default=8000,
    envvar="SLIMLLM_CHAT_PORT",
    show_envvar=True,
    help="Host port (127.0.0.1) of the chat interface.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    envvar="SLIMLLM_THREADS",
    show_envvar=True,
    help="Threads of each inference server (default: its CPUs).",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(1, 7200),
    default=900,
    envvar="SLIMLLM_WAIT_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for everything to be healthy and the tunnel registered (downloads not included).",
)
def stack_up(
    name: str,
    presets: str,
    model_repo: str | None,
    model_file: str | None,
    model_revision: str | None,
    model_sha256: str | None,
    model_alias: str | None,
    chat_format: str | None,
    models_dir: Path | None,
    chat: bool,
    tunnel: bool,
    public: str,
    monitor: bool,
    inference_image: str,
    chat_image: str,
    cloudflared_image: str,
    monitor_image: str,
    released_images: Path | None,
    port: int,
    chat_port: int,
    threads: int | None,
    wait_timeout: float,
) -> None:
    """Start a stack and wait until it is healthy and, with --tunnel, registered with the edge.

    Secrets come from the environment only: TUNNEL_TOKEN (a named tunnel), SLIMLLM_API_KEY (asked
    by the servers, sent by the chat), SLIMLLM_CHAT_API_KEY (asked by the chat), HF_TOKEN (gated
    repos). With --tunnel, what is published (the chat, or the first model) must ask for its key,
    unless --public true: otherwise nothing starts. Step outputs: url (the chat, or the first
    model), tunnel-url, chat-url, inference-urls (JSON), network, healthy; later steps also find
    the quick tunnel's URL in SLIMLLM_TUNNEL_URL.

    An image option left empty takes the release's image recorded in --released-images, pinned by
    digest: the registry must serve that digest under the release tag, else the command fails
    (no fallback to the tag). Without a recorded release it takes slimllm/IMAGE:local.
    """
    mask_secrets()  # before anything can fail and print
    settings = StackSettings(
        name=_name(name),
        models=plan_models(
            preset_list(presets, model_repo, model_file),
            repo=model_repo,
            file=model_file,
            revision=model_revision,
            sha256=model_sha256,
            alias=model_alias,
            chat_format=chat_format,
        ),
        models_dir=_models_dir(models_dir),
        chat=chat,
        tunnel=tunnel,
        public=public,
        monitor=monitor,
        inference_image=inference_image,
        chat_image=chat_image,
        cloudflared_image=cloudflared_image,
        monitor_image=monitor_image,
        port=port,
        chat_port=chat_port,
        threads=threads,
        wait_timeout=wait_timeout,
        released=released.load(released_images) if released_images else released.Release("", {}),
        released_source=str(released_images or "no released-images file"),
    )
    outputs = up(settings)
    click.echo(outputs["url"])
    if outputs["tunnel-url"]:
        click.echo(outputs["tunnel-url"])
    if gha.in_github():
        gha.set_outputs(outputs)
        if outputs["tunnel-url"]:
            gha.export_env(TUNNEL_URL_VARIABLE, outputs["tunnel-url"])


@stack.command("publish-check")
@click.option(
    "--compose-file",
    "-f",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The stack's compose file (e.g., docker-compose.yml).",
)
def stack_publish_check(file: Path) -> None:
    """Refuse a compose stack whose tunnel would publish a service without its key.

    Reads the stack as `docker compose` would run it (COMPOSE_PROFILES and .env included): with
    the tunnel profile on, the service it publishes must have its key (SLIMLLM_CHAT_API_KEY for the
    chat, SLIMLLM_API_KEY for a model), unless SLIMLLM_PUBLIC=true. `make start-*` runs it first.
    """
    result = compose.compose(file, "config", "--format", "json", timeout=120)
    if result.returncode != 0:
        raise UserError(f"docker compose cannot read {file}: {compose.compose_error(result)}")
    reason = publish.compose_refusal(json.loads(result.stdout))
    if reason:
        raise UserError(reason)
    click.echo(f"{file}: publishing allowed")


@stack.command("plan")
@_MODEL_OPTIONS
def stack_plan(
    presets: str,
    model_repo: str | None,
    model_file: str | None,
    model_revision: str | None,
    models_dir: Path | None,
) -> None:
    """Check the model choice and print the models directory and its cache key.

    The key changes whenever a model's repo, file or revision does. Step outputs: models-dir, cache-key.
    """
    plans = plan_models(
        preset_list(presets, model_repo, model_file),
        repo=model_repo,
        file=model_file,
        revision=model_revision,
    )
    models_dir = _models_dir(models_dir)
    digest = hashlib.sha256("\n".join(sorted(p.cache_key for p in plans)).encode()).hexdigest()[:20]
    outputs = {"models-dir": str(models_dir.resolve()), "cache-key": f"slimllm-models-{digest}"}
    for key, value in outputs.items():
        click.echo(f"{key}: {value}")
    if gha.in_github():
        gha.set_outputs(outputs)


@stack.command("watch")
@NAME_OPTION
@click.option(
    "--duration",
    envvar="SLIMLLM_DURATION",
    show_envvar=True,
    default="0",
    help="How long to keep serving (e.g., 5h50m, 30m, 90).",
)
@click.option(
    "--interval",
    type=click.FloatRange(1, 3600),
    default=30,
    envvar="SLIMLLM_WATCH_INTERVAL",
    show_envvar=True,
    help="Seconds between two checks of the containers.",
)
def stack_watch(name: str, duration: str, interval: float) -> None:
    """Keep a stack serving: restart containers that stop or turn unhealthy, until the time is up.

    A quick tunnel that comes back with a new URL is published again: the job summary, a warning
    in the log, and SLIMLLM_TUNNEL_URL for later steps. A cancelled job (SIGTERM) ends the watch
    early. Step outputs: restarts, healthy, tunnel-url.
    """
    outputs = watch(_name(name), parse_duration(duration), interval)
    if gha.in_github():
        gha.set_outputs(outputs)


@stack.command("handoff")
@NAME_OPTION
@click.option(
    "--instance",
    envvar="SLIMLLM_INSTANCE",
    show_envvar=True,
    required=True,
    help="Instance key; the successor serves the same one (e.g., 1).",
)
@click.option(
    "--title",
    envvar="SLIMLLM_RUN_TITLE",
    show_envvar=True,
    required=True,
    help="The workflow's name, which starts the successor's run title (e.g., chat interface).",
)
@click.option(
    "--run-attempt",
    type=click.IntRange(1),
    default=1,
    envvar="GITHUB_RUN_ATTEMPT",
    show_envvar=True,
    help="This run's attempt: a re-run hands off to a successor of its own.",
)
@click.option(
    "--input",
    "inputs",
    type=LINE,
    multiple=True,
    envvar="SLIMLLM_HANDOFF_INPUTS",
    show_envvar=True,
    help="NAME=VALUE input for the successor's dispatch (repeatable; env var: one per line).",
)
@click.option("--repo", envvar="GITHUB_REPOSITORY", show_envvar=True, required=True, help="owner/name.")
@click.option(
    "--run-id", type=int, envvar="GITHUB_RUN_ID", show_envvar=True, required=True, help="This run's id."
)
@click.option(
    "--ref",
    envvar="GITHUB_REF_NAME",
    show_envvar=True,
    required=True,
    help="Branch or tag the successor runs on.",
)
@click.option(
    "--api-url",
    default="https://api.github.com",
    envvar="GITHUB_API_URL",
    show_envvar=True,
    help="GitHub API base URL.",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(1),
    default=1800,
    envvar="SLIMLLM_READY_TIMEOUT",
    show_envvar=True,
    help="Seconds the successor has to become ready.",
)
@click.option(
    "--poll",
    type=click.FloatRange(0.1),
    default=10,
    envvar="SLIMLLM_HANDOFF_POLL",
    show_envvar=True,
    help="Seconds between two looks at the successor.",
)
@click.option(
    "--grace",
    type=click.FloatRange(1, 600),
    default=35,
    envvar="SLIMLLM_SHUTDOWN_GRACE",
    show_envvar=True,
    help="Seconds each container has to finish its requests when stopped.",
)
def stack_handoff(
    name: str,
    instance: str,
    title: str,
    run_attempt: int,
    inputs: tuple[str, ...],
    repo: str,
    run_id: int,
    ref: str,
    api_url: str,
    ready_timeout: float,
    poll: float,
    grace: float,
) -> None:
    """Start this run's successor, wait until it is ready, then drain this stack.

    The successor is this workflow dispatched again with the instance key and this attempt's
    marker, RUN_ID-ATTEMPT, as inputs (`instance`, `predecessor`) besides --input; its run title
    names both, which is how it is found again. It is ready while its run is in progress and its
    "Ready for handoff" step has succeeded. The token (SLIMLLM_GITHUB_TOKEN or GITHUB_TOKEN) needs
    `actions: write`. If the successor does not become ready, this stack keeps serving and the
    step fails. Step outputs: successor-run-id, exit-codes (JSON).
    """
    from slimllm.reports.regression import connect
    from slimllm.runner.handoff import Handoff, HandoffError, HandoffPlan

    token = gha.github_token()
    if not token:
        raise UserError("no GitHub token: set GITHUB_TOKEN (the job needs `permissions: actions: write`)")
    name = _name(name)
    pairs = parse_pairs(inputs, "--input", _INPUT_NAME)
    client = docker()
    if not containers(client, name):
        raise UserError(f"no stack named {name!r} is running")
    plan = HandoffPlan(
        repo=repo,
        run_id=run_id,
        run_attempt=run_attempt,
        ref=ref,
        instance=instance,
        title_prefix=title,
        inputs=pairs,
        ready_timeout=ready_timeout,
        poll=poll,
    )
    try:
        successor = Handoff(connect(token, api_url, retry=False), plan, log=click.echo).run()
    except HandoffError as exc:
        raise UserError(f"handoff failed, this stack keeps serving: {exc}") from None
    codes = drain(client, name, grace)
    remove(client, name)
    gha.append_summary(
        f"### Handed off\n\nTo run {successor.id}; this stack stopped with exit statuses "
        + ", ".join(f"{k} {v}" for k, v in codes.items())
        + "."
    )
    if gha.in_github():
        gha.set_outputs({"successor-run-id": successor.id, "exit-codes": json.dumps(codes)})
    unclean = {k: v for k, v in codes.items() if v != 0}
    if unclean:
        raise UserError(f"the stack did not stop cleanly: {unclean}")


@stack.command("down")
@NAME_OPTION
@click.option(
    "--logs/--no-logs",
    default=False,
    envvar="SLIMLLM_DUMP_LOGS",
    show_envvar=True,
    help="Print every container's last log lines first (e.g., after a failure).",
)
def stack_down(name: str, logs: bool) -> None:
    """Stop and remove a stack's containers and network; the models directory stays."""
    client = docker()
    name = _name(name)
    if logs:
        dump_logs(client, name)
    count = remove(client, name)
    click.echo(f"removed {count} container{'s' if count != 1 else ''} of stack {name}")
