"""The `Host` check of both apps: a request must name a host this server is meant to be reached by.

Why: a web page can make a visitor's browser send requests to 127.0.0.1:8080 or :8000 by having
its own name (attacker.example) resolve to 127.0.0.1 after the page has loaded (DNS rebinding).
The browser then treats the server as the page's own origin, so the same-origin policy does not
stop the page from reading the answers; the one trace of the trick is the `Host` header, which
still names the attacker's domain. Such a request is refused with 400 before any route runs.

Allowed without configuration -- every name no outsider can point at this server:
- IP addresses (a browser that sends one has connected to that address itself);
- `localhost` and `*.localhost` (RFC 6761: always the loopback), `host.docker.internal`;
- names without a dot: the service names of a stack's network (`inference`, `chat`, `phi`), which
  the gateway, the health monitor and the health checks use; a public DNS name always has a dot;
- `*.trycloudflare.com`: a quick tunnel's public name (cloudflared forwards the visitor's `Host`),
  whose addresses only Cloudflare sets.
A request from the tunnel's connector (a trusted proxy, slimllm.networks) passes whatever its
`Host`: the edge routed it to this tunnel for one of the tunnel's own hostnames (a named tunnel's
name needs no setting), and rebinding is a browser reaching a local address, never the tunnel.
Everything else (a server reached by its DNS name) is allowed only when the setting lists it:
names, or `*.domain` for every name under a domain; `*` turns the check off. No web framework
here: the command line parses the setting before the app is imported.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from slimllm.networks import TrustedProxies

# Names under this domain are quick tunnels': what the stacks publish without a token.
QUICK_TUNNEL_DOMAIN = "trycloudflare.com"
_LOCAL_NAMES = frozenset({"localhost", "host.docker.internal"})
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class AllowedHosts:
    """The names a server answers to besides the local ones (see the module doc)."""

    names: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()  # from `*.domain`: any name under it
    any: bool = False

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> AllowedHosts:
        """From the setting: names, `*.domain` or `*`, separated by commas or spaces. A ValueError
        names the first entry that is none of these."""
        items = re.split(r"[\s,]+", text) if isinstance(text, str) else list(text)
        names: set[str] = set()
        domains: set[str] = set()
        wildcard = False
        for item in (i.strip().lower().rstrip(".") for i in items):
            if not item:
                continue
            if item == "*":
                wildcard = True
            elif item.startswith("*.") and _NAME.fullmatch(item[2:]):
                domains.add(item[2:])
            elif _NAME.fullmatch(item):
                names.add(item)
            else:
                raise ValueError(f"not a host name, `*.domain` or `*`: {item[:80]!r}")
        return cls(frozenset(names), frozenset(domains), wildcard)

    def allows(self, header: bytes | None) -> bool:
        """Whether a request whose `Host` header is `header` (None: it has none) may be served."""
        if self.any or header is None:
            # HTTP/1.0 without Host (a bare health probe) cannot be a browser's rebinding request.
            return True
        host = _host_part(header)
        if host is None:
            return False
        if _is_ip(host) or host in _LOCAL_NAMES or host.endswith(".localhost") or "." not in host:
            return True
        if host in self.names:
            return True
        under = {QUICK_TUNNEL_DOMAIN, *self.domains}
        return any(host.endswith("." + domain) for domain in under)


# Only the local names, service names and quick tunnels: the default of both apps.
LOCAL_ONLY = AllowedHosts()


def _host_part(header: bytes) -> str | None:
    """The host of a `Host` header, lower case, without its port or a final dot; None when the
    header is not a host[:port] at all."""
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:]))):
            return None
        return host if _is_ip(host) else None
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    if sep and not _PORT.fullmatch(port):
        return None
    host = host.rstrip(".")
    return host if host and (_NAME.fullmatch(host) or _is_ip(host)) else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: 400 (OpenAI's error shape) for a request whose `Host` is not allowed, or
    that has more than one `Host` header."""

    def __init__(
        self, app: ASGIApp, allowed: AllowedHosts, setting: str, proxies: TrustedProxies | None = None
    ) -> None:
        self.app, self.allowed, self.setting, self.proxies = app, allowed, setting, proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) <= 1 and (
            self.allowed.allows(hosts[0] if hosts else None) or await self._from_tunnel(scope)
        ):
            await self.app(scope, receive, send)
            return
        from slimllm.openai_errors import ApiError

        await ApiError(
            400,
            f"the Host header does not name this server (a name it serves is set in {self.setting})",
            code="invalid_host",
        ).response()(scope, receive, send)

    async def _from_tunnel(self, scope: Scope) -> bool:
        """Whether the peer is the tunnel's connector (a trusted proxy): what it forwards was routed
        to this tunnel by Cloudflare's edge for one of the tunnel's own hostnames, so a named
        tunnel works without listing its name; rebinding is a browser reaching a local address,
        which never comes through the tunnel."""
        client = scope.get("client")
        if self.proxies is None or not client:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if self.proxies.needs_lookup(peer):
            await self.proxies.refresh(0)  # the tunnel, started or restarted since, has a new address
        return self.proxies.trusts(peer)
