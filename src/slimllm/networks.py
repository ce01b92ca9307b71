"""Trusted-proxy networks, as the chat's settings name them. No web framework here: the command
line parses them before anything of the app is imported."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOCAL = "local"
ROUTES = Path("/proc/net/route")


def local_networks(routes: Path = ROUTES) -> list[Network]:
    """The IPv4 networks this host (in a container: the container) is attached to directly: the
    routes without a gateway in the kernel's table. In a stack these are the stack's networks,
    whose only proxy is the tunnel's connector."""
    networks: list[Network] = []
    try:
        lines = routes.read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return networks
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[2] != "00000000" or fields[1] == "00000000":
            continue  # a route through a gateway, or the default route
        # /proc/net/route prints addresses as little-endian hexadecimal.
        address, mask = (ipaddress.IPv4Address(bytes.fromhex(f)[::-1]) for f in (fields[1], fields[7]))
        networks.append(ipaddress.ip_network(f"{address}/{mask}", strict=False))
    return networks


def parse_networks(spec: str | Iterable[str]) -> list[Network]:
    """`10.0.0.0/8, 172.18.0.5` (commas or spaces) as networks, and `local` for the networks this
    host is attached to (local_networks); ValueError names a bad entry."""
    items = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    networks: list[Network] = []
    for item in items:
        if item.strip() == LOCAL:
            networks.extend(local_networks())
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"'{item}' is not an IP address or network") from None
    return networks
