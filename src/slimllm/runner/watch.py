"""Keeping a stack serving (`watch`) and stopping it gracefully (`drain`, for a handoff)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from slimllm import gha
from slimllm.errors import UserError
from slimllm.reports.health import render_health_markdown
from slimllm.runner import stack
from slimllm.runner.compose import CHAT_PORT, INFERENCE_PORT, ROLE_LABEL
from slimllm.runner.stack import docker, probe, published
from slimllm.runner.tunnel import METRICS_PORT, current_quick_tunnel_url

# Where later steps of the job find the quick tunnel's URL; set by `stack up`, and again by the
# watch when a restarted cloudflared got a new one (step outputs cannot change after their step).
TUNNEL_URL_VARIABLE = "SLIMLLM_TUNNEL_URL"

# The order a handoff stops a stack in: first the tunnel, so that the edge sends no new requests
# here (cloudflared finishes those in flight), then the chat, then the servers, then the monitor.
_DRAIN_ORDER = {"tunnel": 0, "chat": 1, "monitor": 3}


def drain(client: Any, name: str, grace: float) -> dict[str, int]:
    """Stop every container gracefully, in `_DRAIN_ORDER`; returns each one's exit status."""
    containers = sorted(
        stack.containers(client, name), key=lambda c: _DRAIN_ORDER.get(c.labels.get(ROLE_LABEL, ""), 2)
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


class QuickTunnelURL:
    """The quick tunnel's public URL, published again whenever it changes: a restarted
    cloudflared gets a new trycloudflare.com hostname, and the old one is gone."""

    def __init__(self) -> None:
        self.url = os.environ.get(TUNNEL_URL_VARIABLE, "")

    def check(self, containers: list[Any]) -> None:
        tunnel = next((c for c in containers if c.labels.get(ROLE_LABEL) == "tunnel"), None)
        if tunnel is None or tunnel.status != "running":
            return
        try:
            url = current_quick_tunnel_url(published(tunnel, METRICS_PORT))
        except UserError:  # no port published yet: restarting
            return
        if not url or url == self.url:  # a named tunnel, no answer yet, or the same URL
            return
        if self.url:
            message = f"the quick tunnel has a new public URL, {url}; {self.url} no longer serves"
            gha.warning(message)
            gha.append_summary(f"### The public URL changed\n\n- Public: {url} (was {self.url})\n")
        else:
            click.echo(f"public URL: {url}")
        gha.export_env(TUNNEL_URL_VARIABLE, url)
        self.url = url


def watch(name: str, duration: int, interval: float) -> dict[str, Any]:
    """Keep the stack up for `duration` seconds: restart containers that stop or turn unhealthy,
    and publish the quick tunnel's URL again when it changes."""
    client = docker()
    containers = stack.containers(client, name)
    if not containers:
        raise UserError(f"no stack named {name!r} is running")
    restarts: dict[str, int] = {}
    tunnel_url = QuickTunnelURL()
    end = time.monotonic() + duration
    next_note = time.monotonic()
    with _until_signalled() as stop:
        while not stop[0] and time.monotonic() < end:
            tunnel_url.check(containers)
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
            containers = stack.containers(client, name)
    urls = {}
    chat_url = ""
    for container in containers:
        role = container.labels.get(ROLE_LABEL, "")
        if role in ("tunnel", "monitor"):
            continue
        port = CHAT_PORT if role == "chat" else INFERENCE_PORT
        try:
            url = published(container, port)
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
    tunnel_url.check(containers)
    return {
        "restarts": sum(restarts.values()),
        "healthy": all(t["up"] for t in health["targets"]),
        "tunnel-url": tunnel_url.url,
    }
