"""What cloudflared's metrics server says about the sidecar: whether it is registered with the
edge, and where a quick tunnel publishes the service.

`GET /ready` answers 200 with `{"readyConnections": N, ...}` once cloudflared holds a connection
to Cloudflare's edge (503 before): only then does the tunnel serve, and for a named tunnel that is
when this connector has joined it as a replica. `GET /quicktunnel` answers
`{"hostname": "<name>.trycloudflare.com"}` once the quick tunnel exists (and an empty hostname for
a named tunnel). That is asked first, until a deadline; cloudflared's own log, which prints the URL
in a box when the tunnel is created, is the fallback.
"""

from __future__ import annotations

import re
import time
from typing import TextIO

import click
import httpx

from slimllm import gha
from slimllm.errors import UserError

# The metrics port the cloudflared image fixes (docker/cloudflared), published on this host.
METRICS_PORT = 20241
DEFAULT_METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}"

# Only quick-tunnel hosts: cloudflared's log also carries other https URLs (its terms of use).
_HOST = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.trycloudflare\.com"
# Not followed by more of a host name: "https://x.trycloudflare.com.example" is not one.
_QUICK_TUNNEL_URL = re.compile(rf"https://{_HOST}(?![\w-]|\.\w)", re.IGNORECASE)
_QUICK_TUNNEL_HOST = re.compile(_HOST, re.IGNORECASE)


class TunnelError(Exception):
    """The tunnel's URL could not be found; the message says what was tried."""


def url_from_log(log_text: str) -> str | None:
    """The newest quick-tunnel URL in cloudflared's log, or None. Newest, because a restarted
    cloudflared gets a new hostname and appends to the same log."""
    found = _QUICK_TUNNEL_URL.findall(log_text)
    return found[-1].lower() if found else None


def _ask_metrics(client: httpx.Client, metrics_url: str) -> str:
    """The quick tunnel's hostname; "" when cloudflared runs a named tunnel. Raises httpx errors
    and ValueError for answers that are not cloudflared's."""
    response = client.get(f"{metrics_url.rstrip('/')}/quicktunnel")
    response.raise_for_status()
    body = response.json()
    hostname = body.get("hostname") if isinstance(body, dict) else None
    if not isinstance(hostname, str):
        raise ValueError(f"no hostname field in {response.text[:200]!r}")
    return hostname


def wait_until_registered(metrics_url: str, timeout: float, *, poll_interval: float = 0.5) -> int:
    """Until `metrics_url`/ready answers 200 with readyConnections >= 1; returns that number.
    Raises TunnelError with the last answer when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=max(0.1, min(5.0, timeout)), trust_env=False) as client:
        while True:
            try:
                response = client.get(f"{metrics_url.rstrip('/')}/ready")
                body = response.json()
                count = body.get("readyConnections") if isinstance(body, dict) else None
                if response.status_code == 200 and isinstance(count, int) and count >= 1:
                    return count
                last = f"HTTP {response.status_code} {response.text.strip()[:200]}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() + poll_interval > deadline:
                raise TunnelError(
                    f"cloudflared did not register with the edge within {timeout:.0f} s "
                    f"({metrics_url}/ready: {last})"
                )
            time.sleep(poll_interval)


def current_quick_tunnel_url(metrics_url: str, timeout: float = 3.0) -> str | None:
    """The quick tunnel's URL right now; "" for a named tunnel, None when cloudflared does not
    answer (restarting, say) or names an unexpected host."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            hostname = _ask_metrics(client, metrics_url)
    except (httpx.HTTPError, ValueError):
        return None
    if not hostname:
        return ""
    return f"https://{hostname.lower()}" if _QUICK_TUNNEL_HOST.fullmatch(hostname) else None


def discover_tunnel_url(
    metrics_url: str = DEFAULT_METRICS_URL,
    timeout: float = 30.0,
    log_text: str | None = None,
    *,
    poll_interval: float = 0.5,
) -> str:
    """The https URL of cloudflared's quick tunnel.

    Asks `metrics_url`/quicktunnel until it names a hostname or `timeout` seconds have passed
    (cloudflared may still be starting), then looks for the URL in `log_text`. Raises TunnelError
    naming both failures when neither gives one.
    """
    deadline = time.monotonic() + timeout
    problem = "no answer"
    named = False
    with httpx.Client(timeout=max(0.1, min(5.0, timeout)), trust_env=False) as client:
        while True:
            try:
                hostname = _ask_metrics(client, metrics_url)
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if hostname:
                    if not _QUICK_TUNNEL_HOST.fullmatch(hostname):
                        raise TunnelError(f"{metrics_url} names an unexpected quick-tunnel host {hostname!r}")
                    return f"https://{hostname.lower()}"
                # The hostname is set before the metrics server starts, so an empty one means a
                # named tunnel, and waiting would not change it.
                named = True
                break
            if time.monotonic() + poll_interval > deadline:
                break
            time.sleep(poll_interval)

    if log_text is not None:
        url = url_from_log(log_text)
        if url:
            return url
        log_part = "and the log names no trycloudflare.com URL"
    else:
        log_part = "and no log was given to search"
    if named:
        raise TunnelError(
            f"cloudflared at {metrics_url} runs a named tunnel (no quick-tunnel hostname), {log_part}; "
            "its URL is the hostname routed to the tunnel in Cloudflare"
        )
    raise TunnelError(
        f"{metrics_url}/quicktunnel gave no hostname within {timeout:g} s ({problem}), {log_part}"
    )


@click.group("tunnel")
def tunnel_cli() -> None:
    """Find the public URL of the cloudflared sidecar."""


@tunnel_cli.command("url")
@click.option(
    "--metrics",
    "metrics_url",
    default=DEFAULT_METRICS_URL,
    envvar="SLIMLLM_TUNNEL_METRICS",
    show_envvar=True,
    help="cloudflared's metrics server.",
)
@click.option(
    "--log-file",
    type=click.File("r", encoding="utf-8", errors="replace"),
    envvar="SLIMLLM_TUNNEL_LOG_FILE",
    show_envvar=True,
    help="cloudflared's log (- for stdin, e.g. from `docker logs`), searched when the metrics give no URL.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    envvar="SLIMLLM_TUNNEL_TIMEOUT",
    show_envvar=True,
    help="Seconds to keep asking the metrics server.",
)
def tunnel_url(metrics_url: str, log_file: TextIO | None, timeout: float) -> None:
    """Print the https URL of cloudflared's quick tunnel (step output `tunnel-url` on GitHub)."""
    log_text = log_file.read() if log_file is not None else None
    try:
        url = discover_tunnel_url(metrics_url, timeout, log_text)
    except TunnelError as exc:
        raise UserError(str(exc)) from None
    click.echo(url)
    if gha.in_github():
        gha.set_output("tunnel-url", url)
