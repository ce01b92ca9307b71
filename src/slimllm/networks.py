"""Who a request comes from, as the servers' settings name it: the trusted proxies (the tunnel's
connector) and the local clients. No web framework here: the command lines parse these before
anything of the apps is imported.

- Trusted proxies (`SLIMLLM_CHAT_TRUSTED_PROXIES`, `SLIMLLM_TRUSTED_PROXIES`): addresses, networks
  or host names. A host name (in the stacks: `tunnel`, the tunnel's service name) is looked up in
  DNS at the first request, then in the background every RESOLVE_SECONDS, and again before the
  first request of a new peer of the container's own networks is taken for not the tunnel's (the
  tunnel, started after the chat or restarted, has a new address); only the addresses it
  has on a network this container is
  attached to directly count, and never a network's gateway: in Docker that address is the host,
  through which every published port is reached (docker-proxy, rootless port drivers), so trusting
  it would let anyone who reaches a published port name themselves in `CF-Connecting-IP`.
- Local clients (`SLIMLLM_CHAT_LOCAL_CLIENTS`, `SLIMLLM_LOCAL_CLIENTS`): `local` (the default) is
  loopback and the networks this container is attached to directly (in a stack: the host, through
  the bridge gateway, and the stack's own services), `none`, or addresses and networks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOCAL = "local"
NONE = "none"
ROUTES = Path("/proc/net/route")
# How old a host name's addresses may be: looked up again in the background after this long (and
# at once before the first request of a new peer of the container's own networks).
RESOLVE_SECONDS = 10.0
# Peers remembered as looked up for and not a proxy (the host, the stack's services), at most.
MAX_CHECKED = 1024
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*\.?")

log = logging.getLogger("slimllm.networks")


def _routes(routes: Path) -> list[list[str]]:
    try:
        lines = routes.read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return []
    return [fields for fields in (line.split() for line in lines) if len(fields) >= 8]


def _ipv4(hex_field: str) -> ipaddress.IPv4Address:
    # /proc/net/route prints addresses as little-endian hexadecimal.
    return ipaddress.IPv4Address(bytes.fromhex(hex_field)[::-1])


def local_networks(routes: Path = ROUTES) -> list[Network]:
    """The IPv4 networks this host (in a container: the container) is attached to directly: the
    routes without a gateway in the kernel's table. In a stack these are the stack's networks."""
    networks: list[Network] = []
    for fields in _routes(routes):
        if fields[2] != "00000000" or fields[1] == "00000000":
            continue  # a route through a gateway, or the default route
        networks.append(ipaddress.ip_network(f"{_ipv4(fields[1])}/{_ipv4(fields[7])}", strict=False))
    return networks


def gateways(routes: Path = ROUTES) -> set[Address]:
    """The gateways of this host's routes: in a container, the bridge's address on the host."""
    return {_ipv4(fields[2]) for fields in _routes(routes) if fields[2] != "00000000"}


def _network(item: str) -> Network | None:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        return None


def _items(spec: str | Iterable[str]) -> list[str]:
    items = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    return [item.strip() for item in items if item.strip()]


def parse_networks(spec: str | Iterable[str]) -> list[Network]:
    """`10.0.0.0/8, 172.18.0.5` (commas or spaces) as networks; ValueError names a bad entry."""
    networks: list[Network] = []
    for item in _items(spec):
        network = _network(item)
        if network is None:
            raise ValueError(f"'{item}' is not an IP address or network")
        networks.append(network)
    return networks


def parse_proxies(spec: str | Iterable[str]) -> list[Network | str]:
    """Trusted proxies: addresses, networks and host names (kept as names, resolved later)."""
    proxies: list[Network | str] = []
    for item in _items(spec):
        if item == LOCAL:
            raise ValueError(
                "'local' is no longer accepted: it trusted the whole stack network, the Docker bridge "
                "gateway included, through which anyone reaching a published port could name "
                "themselves in CF-Connecting-IP; name the tunnel's service instead (`tunnel` in "
                "every stack)"
            )
        network = _network(item)
        if network is not None:
            proxies.append(network)
        elif _HOST_NAME.fullmatch(item):
            proxies.append(item.rstrip("."))
        else:
            raise ValueError(f"'{item}' is not an IP address, network or host name")
    return proxies


def parse_local(spec: str | Iterable[str]) -> list[Network]:
    """Local clients: `local` (loopback and the directly attached networks), `none`, or networks."""
    networks: list[Network] = []
    for item in _items(spec):
        if item == NONE:
            continue
        if item == LOCAL:
            networks += [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
            networks += local_networks()
            continue
        networks += parse_networks([item])
    return networks


Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve(name: str) -> list[str]:
    """The addresses DNS gives `name` (empty when it has none, e.g. the tunnel is not running)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), 2)
    except (OSError, TimeoutError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


class TrustedProxies:
    """The trusted proxies' networks now: the literal ones as given, the host names' current
    addresses on this container's own networks, gateways excluded (see the module doc).

    `networks` is one list, updated in place, so whoever holds it sees every update."""

    def __init__(
        self,
        proxies: Iterable[Network | str],
        *,
        routes: Path | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        routes = routes or ROUTES
        given = list(proxies)
        self.static: list[Network] = [p for p in given if not isinstance(p, str)]
        self.names: list[str] = [p for p in given if isinstance(p, str)]
        self.attached = local_networks(routes)
        self.gateways = gateways(routes)
        self.networks: list[Network] = list(self.static)
        self._resolver, self._clock = resolver or resolve, clock
        self._resolved_at = -float("inf")
        self._pending: asyncio.Future[None] | None = None
        self._said: set[str] = set()
        self._checked: set[Address] = set()

    def trusts(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    def is_attached(self, address: Address) -> bool:
        return any(address in net for net in self.attached)

    @property
    def found(self) -> bool:
        """Whether a name has had a trusted address (the tunnel exists)."""
        return len(self.networks) > len(self.static)

    def needs_lookup(self, peer: Address) -> bool:
        """Whether to look the names up before believing a request of `peer` is not the tunnel's:
        at the first request, and the first time a peer of the container's own networks that is
        not trusted asks (the tunnel, started or restarted since the last lookup, has a new
        address). A peer seen once after a lookup is not waited for again, so a stack without a
        tunnel waits on DNS once per peer at most; the lookups go on in the background."""
        if not self.names:
            return False
        if self._resolved_at == -float("inf"):
            return True
        return self.is_attached(peer) and not self.trusts(peer) and peer not in self._checked

    def checked(self, peer: Address) -> None:
        """`peer` was looked up for and is not a trusted proxy."""
        if len(self._checked) >= MAX_CHECKED:
            self._checked.clear()
        self._checked.add(peer)

    def refresh_soon(self, max_age: float = RESOLVE_SECONDS) -> None:
        """refresh() in the background."""
        stale = self.names and self._clock() - self._resolved_at >= max_age
        if stale and (self._pending is None or self._pending.done()):
            self._pending = asyncio.ensure_future(self._lookup())

    async def refresh(self, max_age: float = RESOLVE_SECONDS) -> None:
        """Look the host names up again if their addresses are older than `max_age` (one lookup
        at a time; whoever asks meanwhile waits for it)."""
        if not self.names or self._clock() - self._resolved_at < max_age:
            return
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._lookup())
        await asyncio.shield(self._pending)

    async def _lookup(self) -> None:
        found: list[Network] = []
        answers = {name: await self._resolver(name) for name in self.names}
        if not any(answers.values()) and self.found:
            # No answer at all (a DNS hiccup, or the tunnel stopped): the last addresses stay
            # trusted rather than the tunnel's requests counting as the host's.
            self._resolved_at = self._clock()
            return
        for name, texts in answers.items():
            for text in texts:
                address = ipaddress.ip_address(text.split("%")[0])
                if address in self.gateways or not self.is_attached(address):
                    self._say(
                        f"{name}:{address}",
                        f"trusted proxy '{name}' is {address}, which is not on this container's own "
                        "networks or is their gateway (the host): not trusted",
                    )
                    continue
                found.append(ipaddress.ip_network(address))
        if self.networks != [*self.static, *found]:
            self._checked.clear()  # an address may have changed hands
        self.networks[:] = [*self.static, *found]
        self._resolved_at = self._clock()
        if self.names and not found:
            self._say(
                "none", f"no trusted proxy found under {', '.join(self.names)} (not running?)", logging.INFO
            )
        elif found:
            self._said.discard("none")

    def _say(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message)
