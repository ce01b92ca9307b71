"""`local` in the chat's trusted proxies: the networks the container is attached to."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from slimllm.limits import client_key
from slimllm.networks import local_networks

# A container on two stack networks, with its default route through the first one's gateway.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0
"""


def test_local_networks_are_the_directly_attached_routes(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert local_networks(routes) == [
        ipaddress.ip_network("172.18.0.0/16"),
        ipaddress.ip_network("192.168.0.0/24"),
    ]
    assert local_networks(tmp_path / "missing") == []


def test_only_a_local_peer_names_the_client(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    trusted = local_networks(routes)
    headers = [(b"cf-connecting-ip", b"203.0.113.7")]
    tunnel = {"client": ("172.18.0.5", 40000), "headers": headers}
    outsider = {"client": ("198.51.100.2", 40000), "headers": headers}
    assert client_key(tunnel, trusted) == "203.0.113.7"  # type: ignore[arg-type]
    assert client_key(outsider, trusted) == "198.51.100.2"  # type: ignore[arg-type]
