"""A stack on this host, as the serve action runs it: `up` (in steps), `remove` and the lookups
that `watch`, `handoff` and `down` share.

One stack is a compose project (slimllm.runner.compose) named after the stack: an inference
server per model, and optionally the chat interface, the cloudflared tunnel and the health
monitor, all extended from the one definition of the services. Its containers carry the label
`io.slimllm.action-stack=<name>`, which is how later steps find them again through the docker
SDK. Models are fetched on the host (so that the action can cache the models directory) and
mounted read-only; each server resolves its preset itself, as it does in the compose stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from slimllm import gha
from slimllm.docker_client import EngineError, docker_client
from slimllm.errors import UserError
from slimllm.model import ModelError, fetch
from slimllm.reports.health import Prober, ProbeSettings, build_targets, render_health_markdown, run_health
from slimllm.runner import compose, publish
from slimllm.runner.compose import CHAT_PORT, INFERENCE_PORT, LABEL, ROLE_LABEL
from slimllm.runner.plan import ModelPlan
from slimllm.runner.released import Release, choose, resolve
from slimllm.runner.tunnel import METRICS_PORT, TunnelError, discover_tunnel_url, wait_until_registered

SECRET_VARIABLES = ("TUNNEL_TOKEN", "SLIMLLM_API_KEY", "SLIMLLM_CHAT_API_KEY", "HF_TOKEN")


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
    # `public` as given ("true", "false", or empty): only "true" publishes without a key
    # (slimllm.runner.publish).
    public: str = "false"
    # The release recorded in the action tree (actions/serve/images.json) and where it was read:
    # the images of the services whose image is not given (empty).
    released: Release = field(default_factory=lambda: Release("", {}))
    released_source: str = "no released-images file"

    def images(self) -> dict[str, str]:
        """The image given for each service the stack runs, by its name in services.yml; empty
        for the released one (or slimllm/IMAGE:local without a release)."""
        wanted = {"inference": (self.inference_image, True), "chat": (self.chat_image, self.chat)}
        wanted["tunnel"] = (self.cloudflared_image, self.tunnel)
        wanted["monitor"] = (self.monitor_image, self.monitor)
        return {service: ref for service, (ref, used) in wanted.items() if used}

    def front(self) -> publish.Front:
        """What the tunnel would publish: the chat, or the first model without it."""
        return "chat" if self.chat else "inference"

    def check_publishing(self) -> None:
        """Fail closed before anything starts: a tunnel needs the key of what it publishes, taken
        from the environment as compose takes it, or `public` true."""
        front = self.front()
        key = os.environ.get(publish.KEY_VARIABLES[front], "")
        publish.check(tunnel=self.tunnel, front=front, key=key, public=self.public)


def docker() -> Any:
    try:
        return docker_client()
    except EngineError as exc:
        raise UserError(str(exc)) from None


def mask_secrets() -> None:
    for variable in SECRET_VARIABLES:
        gha.mask(os.environ.get(variable, ""))


def containers(client: Any, name: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL}={name}"}))


def published(container: Any, port: int) -> str:
    """The host URL of a published port; `container` must be fresh (listed, or reloaded after start)."""
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    if not bindings:
        raise UserError(f"{container.name} publishes no port {port}")
    return f"http://127.0.0.1:{bindings[0]['HostPort']}"


# -- up, step by step --------------------------------------------------------------------------


def up(settings: StackSettings) -> dict[str, Any]:
    """Fetch the models, start the stack, wait until healthy; returns the step outputs."""
    settings.check_publishing()
    client = docker()
    if containers(client, settings.name):
        raise UserError(
            f"a stack named {settings.name!r} is running already: stop it first (slimllm stack down)"
        )
    ports = {plan.name: settings.port + index for index, plan in enumerate(settings.models)}
    clash = next((name for name, port in ports.items() if settings.chat and port == settings.chat_port), None)
    if clash:
        raise UserError(
            f"chat-port {settings.chat_port} is also the port of model {clash!r} (the models take "
            f"{settings.port}-{settings.port + len(ports) - 1}): choose another port or chat-port"
        )
    chosen = choose(settings.images(), settings.released, settings.released_source)
    images = resolve(client, chosen, ensure_image)
    fetch_models(settings)
    project = compose.Project(
        name=settings.name,
        models=[compose.Model(plan.name, plan.environment, ports[plan.name]) for plan in settings.models],
        models_dir=settings.models_dir,
        images=images,
        chat_port=settings.chat_port if settings.chat else None,
        tunnel_metrics_port=METRICS_PORT if settings.tunnel else None,
        monitor=settings.monitor,
        threads=settings.threads,
    )
    deadline = time.monotonic() + settings.wait_timeout
    try:
        start(project, settings.wait_timeout)
        servers = {c.labels[ROLE_LABEL]: c for c in containers(client, settings.name)}
        urls = {plan.name: published(servers[plan.name], INFERENCE_PORT) for plan in settings.models}
        chat_url = published(servers["chat"], CHAT_PORT) if settings.chat else ""
        tunnel_url = ""
        if settings.tunnel:
            # Healthy containers are not enough: the stack serves the public only once its
            # connector holds a connection to the edge, named tunnel or quick.
            connector_registered(servers["tunnel"], deadline)
            tunnel_url = quick_tunnel_url(servers["tunnel"], deadline)
    except BaseException:
        # Leave nothing half-started behind; the logs are the user's only clue.
        dump_logs(client, settings.name)
        remove(client, settings.name)
        raise
    return report(settings, urls, chat_url, tunnel_url)


def ensure_image(client: Any, ref: str, service: str) -> None:
    """Make sure the image is in the local engine: built by actions/build, or pulled now."""
    with contextlib.suppress(Exception):  # not here: try the registry below
        client.images.get(ref)
        return
    try:
        with gha.group(f"pulling {ref}"):
            client.images.pull(ref)
    except Exception as exc:
        raise UserError(
            f"the {service} image {ref!r} is neither in the local engine nor pullable ({exc}); "
            "build it first (actions/build) or give an image reference a registry has"
        ) from None


def fetch_models(settings: StackSettings) -> None:
    for plan in settings.models:
        with gha.group(f"model {plan.name}"):
            try:
                path = fetch(plan.source, settings.models_dir, progress=False)
            except ModelError as exc:
                raise UserError(f"model {plan.name}: {exc}") from None
            click.echo(f"{plan.name}: {path}")


def start(project: compose.Project, timeout: float) -> None:
    """`docker compose up --wait`; a failure is one line that names the container at fault."""
    with tempfile.TemporaryDirectory(prefix="slimllm-stack-") as tmp:
        file = compose.write(project, Path(tmp))
        with gha.group(f"compose project {project.name}"):
            click.echo(file.read_text(encoding="utf-8"))
        result = compose.compose(
            file,
            "up", "--detach", "--no-build", "--wait", "--wait-timeout", str(max(1, int(timeout))),
            timeout=timeout + 120,
        )  # fmt: skip
    if result.returncode == 0:
        return
    client = docker()
    found = containers(client, project.name)
    error = compose.compose_error(result)
    if "Error response from daemon" in error:
        # The engine would not start one of them (a port in use, ...): the others, still starting
        # or never started, are not the cause.
        raise UserError(f"the Docker engine refused to start the stack: {error}")
    for container in found:
        state = container.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status", "")
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=20).decode(errors="replace").strip()
            raise UserError(f"{container.name} exited while starting; its last lines:\n{tail}")
        if health in ("unhealthy", "starting"):
            raise UserError(f"{container.name} was not healthy in time ({health})")
    # Nothing started and failed: the engine refused (a port in use, an image for another platform).
    raise UserError(f"the Docker engine refused to start the stack: {error}")


def connector_registered(tunnel: Any, deadline: float) -> None:
    """Until cloudflared's /ready says it holds a connection to the edge; it is then part of its
    tunnel (one replica of it, for a named tunnel)."""
    remaining = max(5.0, deadline - time.monotonic())
    try:
        ready = wait_until_registered(published(tunnel, METRICS_PORT), timeout=remaining)
    except TunnelError as exc:
        raise UserError(f"the tunnel did not come up: {exc}") from None
    click.echo(f"{tunnel.name}: registered with the edge ({ready} connections)")


def quick_tunnel_url(tunnel: Any, deadline: float) -> str:
    """The quick tunnel's public URL; empty for a named tunnel (its hostname is the user's)."""
    if os.environ.get("TUNNEL_TOKEN", ""):
        return ""
    remaining = max(5.0, deadline - time.monotonic())
    try:
        return discover_tunnel_url(published(tunnel, METRICS_PORT), timeout=remaining)
    except TunnelError as exc:
        raise UserError(f"the tunnel did not come up: {exc}") from None


def report(settings: StackSettings, urls: dict[str, str], chat_url: str, tunnel_url: str) -> dict[str, Any]:
    """The job summary and the step outputs of a stack that is up."""
    local_url = chat_url or urls[settings.models[0].name]
    health = probe(urls, chat_url)
    summary = ["### slimllm is serving", ""]
    summary.append(f"- Local: {local_url}")
    if tunnel_url:
        summary.append(f"- Public: {tunnel_url}")
    elif settings.tunnel:
        summary.append("- Public: your named tunnel's hostname")
    front = settings.front()
    if settings.tunnel and not os.environ.get(publish.KEY_VARIABLES[front], "").strip():
        # Only with `public` true (check_publishing refused it otherwise): said all the same.
        warning = publish.open_warning(front)
        gha.warning(warning)
        summary += ["", f"> **Warning:** {warning}."]
    gha.append_summary("\n".join(summary) + "\n\n" + render_health_markdown(health))
    return {
        "url": local_url,
        "tunnel-url": tunnel_url,
        "chat-url": chat_url,
        "inference-urls": json.dumps(urls),
        "network": f"{settings.name}-net",
        "healthy": all(t["up"] for t in health["targets"]),
    }


def probe(urls: dict[str, str], chat_url: str, *, attempts: int = 3) -> Any:
    specs = [f"{m}={u}" for m, u in urls.items()] + ([f"chat={chat_url}"] if chat_url else [])
    targets = build_targets(specs, [])
    return run_health(targets, Prober(ProbeSettings(attempts=attempts, max_wait=30.0)))


# -- down ----------------------------------------------------------------------------------------


def dump_logs(client: Any, name: str, tail: int = 200) -> None:
    for container in containers(client, name):
        with gha.group(f"logs of {container.name} ({container.status})"):
            try:
                click.echo(container.logs(tail=tail).decode(errors="replace"))
            except Exception as exc:  # a container removed meanwhile
                click.echo(f"(no logs: {exc})")


def remove(client: Any, name: str) -> int:
    found = containers(client, name)
    for container in found:
        # SIGTERM first: the servers drain their streams within the stop grace period that
        # services.yml gives each container (the engine's default when no timeout is sent).
        with contextlib.suppress(Exception):  # already stopped or gone
            container.stop()
        container.remove(force=True, v=True)
    for network in client.networks.list(filters={"label": f"{LABEL}={name}"}):
        network.remove()
    return len(found)
