"""Parameter types and parsing shared by the commands the actions run."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from slimllm.errors import UserError
from slimllm.networks import Network, parse_local, parse_proxies


class _Line(click.types.StringParamType):
    """A repeatable option's values, one per line in its environment variable (values may hold spaces)."""

    name = "line"
    envvar_list_splitter = "\n"


LINE = _Line()


def split_items(values: Sequence[str]) -> list[str]:
    """Items of list inputs: comma, space or newline separated, blanks dropped, order kept."""
    return [item for value in values for item in re.split(r"[\s,]+", value) if item]


def parse_pairs(lines: Sequence[str], what: str, key: re.Pattern[str]) -> dict[str, str]:
    """NAME=VALUE lines (each value may hold several, one per line) into a dict; blank lines skipped."""
    pairs: dict[str, str] = {}
    for line in (line.strip() for value in lines for line in value.splitlines()):
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not key.fullmatch(name):
            # The value may be a secret: only the part before '=' is shown.
            raise UserError(f"{what}: expected NAME=VALUE lines, got one starting {name[:40]!r}")
        pairs[name] = value
    return pairs


def secret_key(variable: str, file: Path | None) -> str | None:
    """A key from the environment variable, else from the file (a Docker secret): never from argv."""
    value = os.environ.get(variable, "").strip()
    if value or file is None:
        return value or None
    try:
        return file.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise UserError(f"cannot read the key file {file}: {exc.strerror or exc}") from None


# A server's key shorter than this is refused at start: 24 random characters are beyond guessing at
# any rate (slimllm.keys backs off wrong ones).
MIN_KEY_LENGTH = 24


def read_key(variable: str, file: Path | None) -> str | None:
    """The key from `variable` or else `file` (see clitypes.secret_key); a UserError (one line) when
    it is shorter than MIN_KEY_LENGTH."""
    key = secret_key(variable, file)
    if key is not None and len(key) < MIN_KEY_LENGTH:
        source = variable if os.environ.get(variable, "").strip() else f"the key file {file}"
        raise UserError(
            f"the API key in {source} has {len(key)} characters; a key needs at least {MIN_KEY_LENGTH} "
            "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key


# The largest request body either app reads: a chat request with a long history fits many times.
MAX_BODY_BYTES = 1 << 20

# The most tokens a chat request without max_tokens generates (--default-max-tokens): the inference
# server's (direct, usually local) and the chat gateway's (the public face). Without a default a
# request generates to the end of the context and holds a slot for it.
DEFAULT_MAX_TOKENS = 1024
GATEWAY_DEFAULT_MAX_TOKENS = 512

# Seconds a chat template (Jinja from the GGUF) may take to render one request (--template-timeout).
TEMPLATE_TIMEOUT = 2.0


def max_body_option(envvar: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """The `--max-body-bytes` option of an HTTP app (one default for both apps)."""
    return click.option(
        "--max-body-bytes",
        type=click.IntRange(min=1024),
        default=MAX_BODY_BYTES,
        envvar=envvar,
        show_envvar=True,
        help="Largest request body in bytes; a larger one gets 413 without being read.",
    )


# The global cap of both apps (limits.Admission): requests at once on the costly routes, and
# requests waiting for a place; more get 503 with Retry-After.
MAX_IN_FLIGHT = 64
MAX_WAITING = 128


@dataclass(frozen=True)
class ClientSettings:
    """Both apps' per-client and global limits and who is who (limits.ClientLimits)."""

    rate_limit: int = 30  # requests a minute per public client; 0: none
    per_client: int = 2  # requests in flight (or waiting) per public client; 0: none
    max_in_flight: int = MAX_IN_FLIGHT  # for all clients together; 0: no cap
    max_waiting: int = MAX_WAITING
    trusted_proxies: tuple[Network | str, ...] = ()  # a str: a host name (slimllm.networks)
    local_clients: tuple[Network, ...] = ()  # nobody, unless given (the commands: `local`)


def client_options(prefix: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Who a request is from, and the global cap: the options both apps share (slimllm.networks,
    slimllm.limits.ClientLimits), as `<prefix>TRUSTED_PROXIES` and so on."""
    options = [
        click.option(
            "--trusted-proxies",
            default="",
            envvar=f"{prefix}TRUSTED_PROXIES",
            show_envvar=True,
            help="The proxies (the Cloudflare tunnel's connector) whose CF-Connecting-IP (and, in "
            "the chat, X-Forwarded-Proto) is believed: addresses, networks, or host names (in a "
            "stack: `tunnel`, the tunnel's service), looked up again every few seconds; a name "
            "counts only with an address on this container's own networks that is not their "
            "gateway (the host).",
        ),
        click.option(
            "--local-clients",
            default="local",
            envvar=f"{prefix}LOCAL_CLIENTS",
            show_envvar=True,
            help="Peers whose requests are the operator's (no per-client limits: they wait for a "
            "place instead): `local` (loopback and this container's own networks, i.e. the host "
            "through a published port and the stack's services; never a trusted proxy), `none`, or "
            "addresses and networks.",
        ),
        click.option(
            "--max-in-flight",
            type=click.IntRange(min=0),
            default=MAX_IN_FLIGHT,
            envvar=f"{prefix}MAX_IN_FLIGHT",
            show_envvar=True,
            help="Requests served at once, all clients together (0: no cap); the next ones wait.",
        ),
        click.option(
            "--max-waiting",
            type=click.IntRange(min=0),
            default=MAX_WAITING,
            envvar=f"{prefix}MAX_WAITING",
            show_envvar=True,
            help="Requests that may wait for a place, served one client after the other; more get "
            "503 with Retry-After.",
        ),
    ]

    def decorate(command: Callable[..., object]) -> Callable[..., object]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def client_networks(
    prefix: str, trusted_proxies: str, local_clients: str
) -> tuple[tuple[Network | str, ...], tuple[Network, ...]]:
    """The parsed --trusted-proxies and --local-clients; a UserError names a bad one."""
    try:
        proxies = tuple(parse_proxies(trusted_proxies))
    except ValueError as exc:
        raise UserError(f"--trusted-proxies / {prefix}TRUSTED_PROXIES: {exc}") from None
    try:
        local = tuple(parse_local(local_clients))
    except ValueError as exc:
        raise UserError(f"--local-clients / {prefix}LOCAL_CLIENTS: {exc}") from None
    return proxies, local
