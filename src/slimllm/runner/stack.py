"""`slimllm stack up|watch|down`: the serve action's containers, run through the Docker Engine API.

One stack is a bridge network with an inference server per model, and optionally the chat
interface, the cloudflared tunnel and the health monitor as sidecars. The containers get the same
hardening as in the compose files (read-only root, no capabilities, no privilege gain, memory and
process limits) and carry the label `io.slimllm.action-stack=<name>`, which is how `watch` and
`down` find them again in later steps. Models are fetched on the host (so that the action can
cache the models directory) and mounted read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
from click.decorators import FC

from slimllm import gha
from slimllm.clitypes import LINE, parse_pairs, split_items
from slimllm.docker_client import EngineError, docker_client, engine_refusal
from slimllm.errors import UserError
from slimllm.inference.server import preset_names, read_preset
from slimllm.model import DEFAULT_MODELS_DIR, ModelError, fetch, parse_source
from slimllm.reports.health import Prober, ProbeSettings, build_targets, render_health_markdown, run_health
from slimllm.runner.tunnel import METRICS_PORT, TunnelError, discover_tunnel_url

LABEL = "io.slimllm.action-stack"
ROLE_LABEL = "io.slimllm.role"
_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,39}")
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
SECRET_VARIABLES = ("TUNNEL_TOKEN", "SLIMLLM_API_KEY", "HF_TOKEN")
INFERENCE_PORT, CHAT_PORT = 8080, 8000

# A tmpfs over the container's /tmp (its root filesystem is read-only), not a path on this host.
TMPFS = {"/tmp": ""}  # noqa: S108
HARDENING: dict[str, Any] = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "restart_policy": {"Name": "unless-stopped"},
}


def _python_health(port: int) -> dict[str, Any]:
    """A Docker health check through the image's python3, the one HTTP client the images have."""
    probe = f"import urllib.request as r; r.urlopen('http://127.0.0.1:{port}/health', timeout=3)"
    second = 1_000_000_000
    return {
        "test": ["CMD", "python3", "-c", probe],
        "interval": 15 * second,
        "timeout": 5 * second,
        "retries": 3,
        "start_period": 120 * second,
    }


def parse_duration(text: str) -> int:
    """Seconds in `90`, `45s`, `30m`, `5h50m`; 0 for an empty value."""
    text = text.strip()
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        raise UserError(f"duration {text!r} is not a number of seconds or like 30m, 5h50m, 45s")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class ModelPlan:
    """One model of the stack: where it comes from and the server settings it needs."""

    name: str
    source: str
    file: str | None
    revision: str | None
    sha256: str | None
    settings: dict[str, str]

    @property
    def cache_key(self) -> str:
        return f"{self.source}|{self.file or ''}|{self.revision or 'main'}"


def plan_models(
    presets: Sequence[str],
    *,
    repo: str | None = None,
    file: str | None = None,
    revision: str | None = None,
    sha256: str | None = None,
    alias: str | None = None,
    chat_format: str | None = None,
) -> list[ModelPlan]:
    plans = []
    known = preset_names()
    for preset in dict.fromkeys(presets):
        if preset not in known:
            raise UserError(f"unknown model preset {preset!r}; choose from: {', '.join(known)}")
        values = read_preset(preset)
        settings = {
            k: v
            for k, v in values.items()
            if k
            not in ("SLIMLLM_MODEL", "SLIMLLM_MODEL_FILE", "SLIMLLM_MODEL_REVISION", "SLIMLLM_MODEL_SHA256")
        }
        plans.append(
            ModelPlan(
                name=preset,
                source=values.get("SLIMLLM_MODEL", "default"),
                file=values.get("SLIMLLM_MODEL_FILE"),
                revision=values.get("SLIMLLM_MODEL_REVISION"),
                sha256=values.get("SLIMLLM_MODEL_SHA256"),
                settings=settings,
            )
        )
    if repo or file:
        if not (repo and file):
            raise UserError("a Hugging Face model needs both model-repo and model-file")
        name = (alias or Path(file).stem).lower()
        name = re.sub(r"[^a-z0-9.-]+", "-", name).strip("-.")[:40] or "model"
        if not _MODEL_NAME.fullmatch(name):
            raise UserError(f"model alias {alias!r} must be lowercase letters, digits, '.' or '-'")
        settings = {"SLIMLLM_MODEL_ALIAS": alias or Path(file).stem}
        if chat_format:
            settings["SLIMLLM_CHAT_FORMAT"] = chat_format
        plans.append(ModelPlan(name, repo, file, revision, sha256, settings))
    if not plans:
        raise UserError("no model to serve: give a preset (e.g., default) or model-repo and model-file")
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise UserError(f"two models are named {names[-1]!r}; give the Hugging Face model another alias")
    return plans


def _docker() -> Any:
    try:
        return docker_client()
    except EngineError as exc:
        raise UserError(str(exc)) from None


def _mask_secrets() -> None:
    for variable in SECRET_VARIABLES:
        gha.mask(os.environ.get(variable, ""))


def _containers(client: Any, name: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL}={name}"}))


def _image(client: Any, ref: str, role: str) -> None:
    """Make sure the image is in the local engine: built by actions/build, or pulled now."""
    with contextlib.suppress(Exception):  # not here: try the registry below
        client.images.get(ref)
        return
    try:
        with gha.group(f"pulling {ref}"):
            client.images.pull(ref)
    except Exception as exc:
        raise UserError(
            f"the {role} image {ref!r} is neither in the local engine nor pullable ({exc}); "
            "build it first (actions/build) or give an image reference a registry has"
        ) from None


def _published(container: Any, port: int) -> str:
    """The host URL of a published port; `container` must be fresh (listed, or reloaded after start)."""
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    if not bindings:
        raise UserError(f"{container.name} publishes no port {port}")
    return f"http://127.0.0.1:{bindings[0]['HostPort']}"


def _wait_healthy(container: Any, url: str, deadline: float) -> None:
    with httpx.Client(timeout=5, trust_env=False) as client:
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                tail = container.logs(tail=20).decode(errors="replace").strip()
                raise UserError(f"{container.name} exited while starting; its last lines:\n{tail}")
            try:
                if client.get(url + "/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise UserError(f"{container.name} was not healthy at {url}/health in time")
            time.sleep(1)


@dataclass
class StackSettings:
    name: str
    models: list[ModelPlan]
    models_dir: Path
    chat: bool
    tunnel: bool
    monitor: bool
    inference_image: str
    chat_image: str
    cloudflared_image: str
    monitor_image: str
    port: int
    chat_port: int
    threads: int | None
    wait_timeout: float


def up(settings: StackSettings) -> dict[str, Any]:
    """Fetch the models, start the containers, wait until healthy; returns the step outputs."""
    client = _docker()
    name = settings.name
    if _containers(client, name):
        raise UserError(f"a stack named {name!r} is running already: stop it first (slimllm stack down)")
    roles = [(settings.inference_image, "inference")]
    roles += [(settings.chat_image, "chat-interface")] if settings.chat else []
    roles += [(settings.cloudflared_image, "cloudflared")] if settings.tunnel else []
    roles += [(settings.monitor_image, "health-monitor")] if settings.monitor else []
    for ref, role in roles:
        _image(client, ref, role)

    paths = {}
    for plan in settings.models:
        with gha.group(f"model {plan.name}"):
            try:
                source = parse_source(
                    plan.source, filename=plan.file, revision=plan.revision, sha256=plan.sha256
                )
                paths[plan.name] = fetch(source, settings.models_dir, progress=False)
            except ModelError as exc:
                raise UserError(f"model {plan.name}: {exc}") from None
            click.echo(f"{plan.name}: {paths[plan.name]}")

    network = client.networks.create(f"{name}-net", driver="bridge", labels={LABEL: name})
    deadline = time.monotonic() + settings.wait_timeout
    api_key = os.environ.get("SLIMLLM_API_KEY", "")

    def run(image: str, role: str, **kwargs: Any) -> Any:
        container = client.containers.run(
            image,
            name=f"{name}-{role}",
            detach=True,
            network=network.name,
            labels={LABEL: name, ROLE_LABEL: role},
            **HARDENING,
            **kwargs,
        )
        container.reload()  # the object is from before the start: no published ports yet
        return container

    try:
        servers = {}
        for index, plan in enumerate(settings.models):
            env = {**plan.settings, "SLIMLLM_MODEL": f"/models/{paths[plan.name].name}"}
            if settings.threads:
                env["SLIMLLM_THREADS"] = str(settings.threads)
            if api_key:
                env["SLIMLLM_API_KEY"] = api_key
            container = run(
                settings.inference_image,
                plan.name,
                environment=env,
                volumes={str(settings.models_dir.resolve()): {"bind": "/models", "mode": "ro"}},
                tmpfs=TMPFS,
                ports={f"{INFERENCE_PORT}/tcp": ("127.0.0.1", settings.port + index)},
                mem_limit="6g",
                pids_limit=256,
                healthcheck=_python_health(INFERENCE_PORT),
                stop_signal="SIGTERM",
            )
            servers[plan.name] = container
        urls = {model: _published(c, INFERENCE_PORT) for model, c in servers.items()}
        for model, container in servers.items():
            with gha.group(f"waiting for {container.name}"):
                _wait_healthy(container, urls[model], deadline)

        front = f"http://{name}-{settings.models[0].name}:{INFERENCE_PORT}"
        chat_url = ""
        if settings.chat:
            env = {
                "SLIMLLM_CHAT_MODELS": ";".join(f"{m}=http://{name}-{m}:{INFERENCE_PORT}" for m in servers)
            }
            if api_key:
                env.update(
                    {
                        f"SLIMLLM_CHAT_KEY_{m.upper().replace('-', '_').replace('.', '_')}": api_key
                        for m in servers
                    }
                )
            chat = run(
                settings.chat_image,
                "chat",
                environment=env,
                tmpfs=TMPFS,
                ports={f"{CHAT_PORT}/tcp": ("127.0.0.1", settings.chat_port)},
                mem_limit="256m",
                pids_limit=128,
                healthcheck=_python_health(CHAT_PORT),
            )
            chat_url = _published(chat, CHAT_PORT)
            _wait_healthy(chat, chat_url, deadline)
            front = f"http://{name}-chat:{CHAT_PORT}"

        tunnel_url = ""
        if settings.tunnel:
            env = {"TUNNEL_URL": front}
            token = os.environ.get("TUNNEL_TOKEN", "")
            if token:
                env["TUNNEL_TOKEN"] = token
            tunnel = run(
                settings.cloudflared_image,
                "tunnel",
                environment=env,
                tmpfs=TMPFS,
                ports={f"{METRICS_PORT}/tcp": ("127.0.0.1", None)},
                mem_limit="128m",
                pids_limit=64,
            )
            if not token:
                remaining = max(5.0, deadline - time.monotonic())
                try:
                    tunnel_url = discover_tunnel_url(_published(tunnel, METRICS_PORT), timeout=remaining)
                except TunnelError as exc:
                    raise UserError(f"the tunnel did not come up: {exc}") from None

        if settings.monitor:
            targets = [f"{m}=http://{name}-{m}:{INFERENCE_PORT}/health" for m in servers]
            targets += [f"chat=http://{name}-chat:{CHAT_PORT}/health"] if settings.chat else []
            run(
                settings.monitor_image,
                "monitor",
                environment={
                    "MONITOR_TARGETS": " ".join(targets),
                    "MONITOR_INTERVAL": "10s",
                    "MONITOR_FAILURES": "2",
                },
                tmpfs={"/run/health-monitor": "uid=65532,gid=65532"},
                mem_limit="32m",
                pids_limit=32,
            )
    except BaseException as exc:
        # Leave nothing half-started behind; the logs are the user's only clue.
        dump_logs(client, name)
        remove(client, name)
        refusal = engine_refusal(exc)
        if refusal is not None:
            # The engine refused something (a port in use, an image for another platform): say what.
            raise UserError(f"the Docker engine refused to start the stack: {refusal}") from None
        raise

    local_url = chat_url or urls[settings.models[0].name]
    health = probe(urls, chat_url)
    summary = ["### slimllm is serving", ""]
    summary.append(f"- Local: {local_url}")
    if tunnel_url:
        summary.append(f"- Public: {tunnel_url}")
    elif settings.tunnel:
        summary.append("- Public: your named tunnel's hostname")
    gha.append_summary("\n".join(summary) + "\n\n" + render_health_markdown(health))
    return {
        "url": local_url,
        "tunnel-url": tunnel_url,
        "chat-url": chat_url,
        "inference-urls": json.dumps(urls),
        "network": network.name,
        "healthy": all(t["up"] for t in health["targets"]),
    }


def probe(urls: dict[str, str], chat_url: str, *, attempts: int = 3) -> Any:
    specs = [f"{m}={u}" for m, u in urls.items()] + ([f"chat={chat_url}"] if chat_url else [])
    targets = build_targets(specs, [])
    return run_health(targets, Prober(ProbeSettings(attempts=attempts, max_wait=30.0)))


def dump_logs(client: Any, name: str, tail: int = 200) -> None:
    for container in _containers(client, name):
        with gha.group(f"logs of {container.name} ({container.status})"):
            try:
                click.echo(container.logs(tail=tail).decode(errors="replace"))
            except Exception as exc:  # a container removed meanwhile
                click.echo(f"(no logs: {exc})")


def remove(client: Any, name: str) -> int:
    containers = _containers(client, name)
    for container in containers:
        # SIGTERM first: the servers drain their streams within their grace period.
        with contextlib.suppress(Exception):  # already stopped or gone
            container.stop(timeout=35)
        container.remove(force=True, v=True)
    for network in client.networks.list(filters={"label": f"{LABEL}={name}"}):
        network.remove()
    return len(containers)


# The order a handoff stops a stack in: first the tunnel, so that the edge sends no new requests
# here (cloudflared finishes those in flight), then the chat, then the servers, then the monitor.
_DRAIN_ORDER = {"tunnel": 0, "chat": 1, "monitor": 3}


def drain(client: Any, name: str, grace: float) -> dict[str, int]:
    """Stop every container gracefully, in `_DRAIN_ORDER`; returns each one's exit status."""
    containers = sorted(
        _containers(client, name), key=lambda c: _DRAIN_ORDER.get(c.labels.get(ROLE_LABEL, ""), 2)
    )
    codes = {}
    for container in containers:
        with gha.group(f"stopping {container.name}"):
            started = time.monotonic()
            container.stop(timeout=int(grace))
            container.reload()
            codes[container.name] = int(container.attrs["State"]["ExitCode"])
            click.echo(
                f"{container.name} exited {codes[container.name]} after {time.monotonic() - started:.1f} s"
            )
    return codes


@contextmanager
def _until_signalled() -> Iterator[list[bool]]:
    """Turn SIGTERM/SIGINT (a cancelled job) into a flag the watch loop checks."""
    stop = [False]

    def handler(signum: int, frame: object) -> None:
        stop[0] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch(name: str, duration: int, interval: float) -> dict[str, Any]:
    """Keep the stack up for `duration` seconds: restart containers that stop or turn unhealthy."""
    client = _docker()
    containers = _containers(client, name)
    if not containers:
        raise UserError(f"no stack named {name!r} is running")
    restarts: dict[str, int] = {}
    end = time.monotonic() + duration
    next_note = time.monotonic()
    with _until_signalled() as stop:
        while not stop[0] and time.monotonic() < end:
            for container in containers:
                state = container.attrs.get("State", {})
                health = (state.get("Health") or {}).get("Status", "")
                if container.status != "running" or health == "unhealthy":
                    restarts[container.name] = restarts.get(container.name, 0) + 1
                    gha.warning(f"{container.name} is {health or container.status}; restarting it")
                    container.restart(timeout=10)
            if time.monotonic() >= next_note:
                left = max(0, int(end - time.monotonic()))
                click.echo(f"serving; {left // 60} min left, {sum(restarts.values())} restarts so far")
                next_note = time.monotonic() + 300
            deadline = min(end, time.monotonic() + interval)
            while not stop[0] and time.monotonic() < deadline:
                time.sleep(0.5)
            containers = _containers(client, name)
    urls = {}
    chat_url = ""
    for container in containers:
        role = container.labels.get(ROLE_LABEL, "")
        if role in ("tunnel", "monitor"):
            continue
        port = CHAT_PORT if role == "chat" else INFERENCE_PORT
        try:
            url = _published(container, port)
        except UserError:
            continue
        if role == "chat":
            chat_url = url
        else:
            urls[role] = url
    health = probe(urls, chat_url, attempts=2)
    table = "\n".join(f"| {c} | {n} |" for c, n in sorted(restarts.items()))
    restart_md = f"\n\n| container | restarts |\n|---|---:|\n{table}" if restarts else "\n\nNo restarts."
    gha.append_summary(
        render_health_markdown(health, heading="### Health at the end of the keep-alive") + restart_md
    )
    return {"restarts": sum(restarts.values()), "healthy": all(t["up"] for t in health["targets"])}


# -- the command line ---------------------------------------------------------------------------


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
    help="Name of that model in the API and the chat (default: the file name).",
)
@click.option(
    "--chat-format",
    envvar="SLIMLLM_CHAT_FORMAT",
    show_envvar=True,
    help="Chat template of that model when its GGUF has none (e.g., chatml).",
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
    "--monitor/--no-monitor",
    default=True,
    envvar="SLIMLLM_MONITOR",
    show_envvar=True,
    help="Run the health monitor sidecar.",
)
@click.option(
    "--inference-image",
    default="slimllm/inference:local",
    envvar="SLIMLLM_INFERENCE_IMAGE",
    show_envvar=True,
    help="Inference server image.",
)
@click.option(
    "--chat-image",
    default="slimllm/chat-interface:local",
    envvar="SLIMLLM_CHAT_IMAGE",
    show_envvar=True,
    help="Chat interface image.",
)
@click.option(
    "--cloudflared-image",
    default="slimllm/cloudflared:local",
    envvar="SLIMLLM_CLOUDFLARED_IMAGE",
    show_envvar=True,
    help="Tunnel sidecar image.",
)
@click.option(
    "--monitor-image",
    default="slimllm/health-monitor:local",
    envvar="SLIMLLM_MONITOR_IMAGE",
    show_envvar=True,
    help="Health monitor image.",
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
    help="Seconds to wait for everything to be healthy (downloads not included).",
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
    monitor: bool,
    inference_image: str,
    chat_image: str,
    cloudflared_image: str,
    monitor_image: str,
    port: int,
    chat_port: int,
    threads: int | None,
    wait_timeout: float,
) -> None:
    """Start a stack and wait until it is healthy.

    Secrets come from the environment only: TUNNEL_TOKEN (a named tunnel), SLIMLLM_API_KEY (asked
    by the servers, sent by the chat), HF_TOKEN (gated repos). Step outputs: url (the chat, or the
    first model), tunnel-url, chat-url, inference-urls (JSON), network, healthy.
    """
    _mask_secrets()  # before anything can fail and print
    settings = StackSettings(
        name=_name(name),
        models=plan_models(
            _preset_list(presets, model_repo, model_file),
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
        monitor=monitor,
        inference_image=inference_image,
        chat_image=chat_image,
        cloudflared_image=cloudflared_image,
        monitor_image=monitor_image,
        port=port,
        chat_port=chat_port,
        threads=threads,
        wait_timeout=wait_timeout,
    )
    outputs = up(settings)
    click.echo(outputs["url"])
    if outputs["tunnel-url"]:
        click.echo(outputs["tunnel-url"])
    if gha.in_github():
        gha.set_outputs(outputs)


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
        _preset_list(presets, model_repo, model_file),
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


def _models_dir(value: Path | None) -> Path:
    """The models directory given, or one under RUNNER_TEMP on a runner and ./models elsewhere."""
    if value is not None:
        return value
    runner_temp = os.environ.get("RUNNER_TEMP")
    return Path(runner_temp) / "slimllm-models" if runner_temp else DEFAULT_MODELS_DIR


def _preset_list(presets: str, repo: str | None, file: str | None) -> list[str]:
    """The presets asked for; `default` when neither a preset nor a Hugging Face model is."""
    return split_items([presets]) or ([] if repo or file else ["default"])


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

    A cancelled job (SIGTERM) ends the watch early. Step outputs: restarts, healthy.
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

    The successor is this workflow dispatched again with the instance key and this run's id as
    inputs (`instance`, `predecessor`) besides --input. The token (SLIMLLM_GITHUB_TOKEN or
    GITHUB_TOKEN) needs `actions: write`. If the successor does not become ready, this stack keeps
    serving and the step fails. Step outputs: successor-run-id, exit-codes (JSON).
    """
    from slimllm.runner.handoff import Handoff, HandoffError, HandoffPlan
    from slimllm.reports.regression import connect

    token = gha.github_token()
    if not token:
        raise UserError("no GitHub token: set GITHUB_TOKEN (the job needs `permissions: actions: write`)")
    name = _name(name)
    pairs = parse_pairs(inputs, "--input", _INPUT_NAME)
    client = _docker()
    if not _containers(client, name):
        raise UserError(f"no stack named {name!r} is running")
    plan = HandoffPlan(
        repo=repo,
        run_id=run_id,
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
    client = _docker()
    name = _name(name)
    if logs:
        dump_logs(client, name)
    count = remove(client, name)
    click.echo(f"removed {count} container{'s' if count != 1 else ''} of stack {name}")
