"""Who a client is, and the limits that follow from it, on both apps in process (real uvicorn, real
HTTP; the chat in front of tests/fakes/openai_backend.py, the inference server with a model that is
still loading, so every request it lets in answers 503 `model_loading` at once).

- IPv6 clients are their /64: 1,000 addresses of one /64 share one allowance, on both apps.
- CF-Connecting-IP is believed only from the tunnel's own address (a host name looked up in DNS),
  never from the bridge gateway through which the host reaches a published port.
- Local requests (the host, the stack's services) and requests with the operator's key wait for a
  place instead of getting 429; past the global cap, 503 with Retry-After; a client with one
  request waiting is served before a greedy client's backlog (fair order).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm import networks
from slimllm.chat.app import Protection, create_app
from slimllm.chat.backends import Registry
from slimllm.chat.config import load_models
from slimllm.clitypes import ClientSettings
from slimllm.inference.api import Settings
from slimllm.inference.api import create_app as create_inference_app
from slimllm.limits import Admission, ClientLimits, client_key
from slimllm.networks import TrustedProxies, parse_local, parse_networks, parse_proxies
from slimllm.openai_errors import ApiError
from tests.fakes.openai_backend import serve_backend
from tests.support import serving

KEY = "operator-key-0123456789abcdef"
CHAT = {"model": "xss", "messages": [{"role": "user", "content": "x"}]}
SLOW = {
    "model": "slow",
    "messages": [{"role": "user", "content": "x"}],
    "stream": True,
}  # waits before its answer
# A container on 127.0.0.0/8 whose gateway (the host, as docker-proxy's peer) is 127.0.0.1; the
# tunnel is 127.0.0.2 on it.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
"""
GATEWAY, TUNNEL = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with serve_backend(delay=0.4) as (base, _):
        yield base


@contextmanager
def gateway(backend: str, protection: Protection) -> Iterator[str]:
    spec = f"xss={backend}/xss;slow={backend}/slow"
    registry = Registry(load_models(spec, None, {}), poll_interval=0.5, request_timeout=30)
    with serving(create_app(registry, keepalive=15.0, protection=protection)) as url:
        headers = {"Authorization": f"Bearer {protection.api_key}"} if protection.api_key else {}
        deadline = time.monotonic() + 10
        while any(
            m["status"] != "up" for m in httpx.get(url + "/api/models", headers=headers).json()["models"]
        ):
            assert time.monotonic() < deadline, "no health poll happened"
            time.sleep(0.02)
        yield url


@contextmanager
def loading_inference(clients: ClientSettings) -> Iterator[str]:
    """The inference app whose model never finishes loading: what it lets in answers 503 at once."""
    never = threading.Event()

    def load() -> Any:
        never.wait(30)
        raise RuntimeError("not loaded")

    app = create_inference_app(Settings(model_id="m", clients=clients), load=load, on_fatal=lambda _: None)
    try:
        with serving(app) as url:
            yield url
    finally:
        never.set()


def scope(peer: str, **headers: str) -> Any:
    return {
        "type": "http",
        "client": (peer, 5000),
        "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


# -- who a client is -------------------------------------------------------------------------


def test_client_key_is_the_ipv6_64_and_unmaps_ipv4() -> None:
    assert client_key(scope("2001:db8:1:2:aaaa::1"), []) == "2001:db8:1:2::/64"
    assert client_key(scope("2001:db8:1:2:ffff:1:2:3"), []) == "2001:db8:1:2::/64"
    assert client_key(scope("2001:db8:1:3::1"), []) == "2001:db8:1:3::/64"
    assert client_key(scope("::ffff:198.51.100.7"), []) == "198.51.100.7"
    assert client_key(scope("198.51.100.7"), []) == "198.51.100.7"
    tunnel = parse_networks("10.0.0.5")
    forwarded = scope("10.0.0.5", cf_connecting_ip="2001:db8:7:7:1::9")
    assert client_key(forwarded, tunnel) == "2001:db8:7:7::/64"
    assert client_key(scope("10.0.0.5", cf_connecting_ip="::ffff:203.0.113.9"), tunnel) == "203.0.113.9"
    # From a peer that is not the tunnel, the header is nobody's word.
    assert client_key(scope("10.0.0.6", cf_connecting_ip="203.0.113.9"), tunnel) == "10.0.0.6"


def many_from_one_64(url: str, path: str, body: dict[str, Any], count: int) -> list[int]:
    prefix = "2001:db8:5:6"
    addresses = {
        f"{prefix}:{random.getrandbits(16):x}:{random.getrandbits(16):x}:{random.getrandbits(16):x}:{i:x}"
        for i in range(count)
    }
    assert len(addresses) == count
    with httpx.Client(timeout=30) as client:
        return [
            client.post(url + path, json=body, headers={"CF-Connecting-IP": a}).status_code for a in addresses
        ]


def test_a_thousand_clients_of_one_64_share_one_limit_at_the_gateway(backend: str) -> None:
    protection = Protection(rate_limit=5, trusted_proxies=tuple(parse_networks("127.0.0.0/8")))
    with gateway(backend, protection) as url:
        codes = many_from_one_64(url, "/v1/chat/completions", CHAT, 1000)
        assert codes.count(200) == 5 and codes.count(429) == 995, sorted(set(codes))
        other = httpx.post(
            url + "/v1/chat/completions", json=CHAT, headers={"CF-Connecting-IP": "2001:db8:5:7::1"}
        )
        assert other.status_code == 200  # the next /64 is another client


def test_a_thousand_clients_of_one_64_share_one_limit_at_the_inference_server() -> None:
    clients = ClientSettings(rate_limit=5, trusted_proxies=tuple(parse_networks("127.0.0.0/8")))
    with loading_inference(clients) as url:
        codes = many_from_one_64(url, "/tokenize", {"content": "hi"}, 1000)
        # Let in: 503 model_loading (the model never loads here); refused: 429.
        assert codes.count(503) == 5 and codes.count(429) == 995, sorted(set(codes))
        other = httpx.post(
            url + "/tokenize", json={"content": "hi"}, headers={"CF-Connecting-IP": "2001:db8::1"}
        )
        assert other.status_code == 503


# -- trusted proxies -------------------------------------------------------------------------


@pytest.fixture
def container_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """This process seen as a container on 127.0.0.0/8 (gateway 127.0.0.1), with a DNS whose
    answers the test sets."""
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    monkeypatch.setattr(networks, "ROUTES", routes)
    dns: dict[str, list[str]] = {"tunnel": [TUNNEL]}

    async def lookup(name: str) -> list[str]:
        return list(dns.get(name, []))

    monkeypatch.setattr(networks, "resolve", lookup)
    return dns


def from_address(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def test_spoofed_cf_connecting_ip_from_the_bridge_gateway_is_ignored(
    backend: str, container_routes: dict[str, list[str]]
) -> None:
    """The host reaches a published port through docker-proxy, whose peer address is the bridge
    gateway: whatever it says in CF-Connecting-IP, it is one client. The tunnel is believed."""
    protection = Protection(rate_limit=2, trusted_proxies=tuple(parse_proxies("tunnel")), api_key=None)
    with gateway(backend, protection) as url, from_address(GATEWAY) as host, from_address(TUNNEL) as tunnel:
        spoofed = [
            host.post(url + "/v1/chat/completions", json=CHAT, headers={"CF-Connecting-IP": f"203.0.113.{i}"})
            for i in range(3)
        ]
        assert [r.status_code for r in spoofed] == [200, 200, 429]
        # Through the tunnel, each visitor is itself.
        visitors = [
            tunnel.post(
                url + "/v1/chat/completions", json=CHAT, headers={"CF-Connecting-IP": f"198.51.100.{i}"}
            )
            for i in range(4)
        ]
        assert [r.status_code for r in visitors] == [200] * 4


def test_a_proxy_name_counts_only_on_the_containers_own_networks_and_never_as_the_gateway(
    container_routes: dict[str, list[str]],
) -> None:
    now = [0.0]
    proxies = TrustedProxies(["tunnel"], clock=lambda: now[0])
    asyncio.run(proxies.refresh())
    assert proxies.networks == [ipaddress.ip_network(TUNNEL)]
    # The tunnel restarts with a new address: looked up again once the old answer is stale.
    container_routes["tunnel"] = ["127.0.0.9"]
    asyncio.run(proxies.refresh(max_age=1.0))
    assert proxies.networks == [ipaddress.ip_network(TUNNEL)]  # still fresh
    now[0] = 2.0
    asyncio.run(proxies.refresh(max_age=1.0))
    assert proxies.networks == [ipaddress.ip_network("127.0.0.9")]
    # No answer (a DNS hiccup): the last address stays trusted, so the tunnel is not taken for
    # the host meanwhile.
    container_routes["tunnel"] = []
    now[0] = 3.0
    asyncio.run(proxies.refresh(max_age=1.0))
    assert proxies.networks == [ipaddress.ip_network("127.0.0.9")]
    # A name that is the gateway (the host) or off the container's networks is not trusted.
    container_routes["tunnel"] = [GATEWAY, "203.0.113.5"]
    now[0] = 5.0
    asyncio.run(proxies.refresh(max_age=1.0))
    assert proxies.networks == []


def test_a_peer_waits_on_dns_once_and_a_tunnel_started_later_is_found(
    container_routes: dict[str, list[str]],
) -> None:
    """A stack whose tunnel starts after the chat (as in the stacks: the tunnel waits for the chat
    to be healthy): the host's requests wait on DNS once; the tunnel's first request, from an
    address not seen before, waits for a new lookup, however fresh the last, and is believed."""
    lookups: list[str] = []
    answers = container_routes
    answers.pop("tunnel")

    async def counted(name: str) -> list[str]:
        lookups.append(name)
        return list(answers.get(name, []))

    limits = ClientLimits(
        lambda *_: None,  # type: ignore[arg-type,return-value]
        paths=(),
        settings=ClientSettings(),
        proxies=TrustedProxies(["tunnel"], resolver=counted),
    )

    async def scenario() -> None:
        for _ in range(3):
            assert await limits.who(scope(GATEWAY, cf_connecting_ip="203.0.113.1")) == (GATEWAY, False)
        assert len(lookups) == 1  # the host waited on DNS once
        answers["tunnel"] = [TUNNEL]
        assert await limits.who(scope(TUNNEL, cf_connecting_ip="198.51.100.7")) == ("198.51.100.7", False)
        assert len(lookups) == 2
        assert await limits.who(scope(GATEWAY, cf_connecting_ip="203.0.113.1")) == (GATEWAY, False)

    asyncio.run(scenario())


def test_local_is_refused_as_a_trusted_proxy_with_a_way_out() -> None:
    with pytest.raises(ValueError, match="tunnel"):
        parse_proxies("local")
    with pytest.raises(ValueError, match="not an IP address, network or host name"):
        parse_proxies("a/b")
    assert parse_proxies("tunnel, 10.0.0.0/8") == ["tunnel", ipaddress.ip_network("10.0.0.0/8")]
    assert parse_local("none") == []
    assert ipaddress.ip_network("127.0.0.0/8") in parse_local("local")


# -- local requests, the operator, the global cap, fairness ----------------------------------


def concurrently(count: int, call: Any) -> list[Any]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: call(i), range(count)))


def test_local_requests_wait_instead_of_being_refused(backend: str) -> None:
    """16 at once from the host, over a per-client limit of 1 and a rate of 2 a minute: all 200."""
    protection = Protection(
        rate_limit=2, max_streams_per_client=1, max_in_flight=4, local_clients=tuple(parse_local("local"))
    )
    with gateway(backend, protection) as url:
        codes = concurrently(
            16, lambda i: httpx.post(url + "/v1/chat/completions", json=SLOW, timeout=60).status_code
        )
        assert codes == [200] * 16


def test_the_operators_key_waits_instead_of_being_refused(backend: str) -> None:
    protection = Protection(
        api_key=KEY,
        rate_limit=1,
        max_streams_per_client=1,
        trusted_proxies=tuple(parse_networks("127.0.0.0/8")),
    )
    visitor = {"CF-Connecting-IP": "203.0.113.50"}
    with gateway(backend, protection) as url:
        codes = concurrently(
            6,
            lambda i: (
                httpx.post(
                    url + "/v1/chat/completions",
                    json=SLOW,
                    headers={**visitor, "Authorization": f"Bearer {KEY}"},
                    timeout=60,
                ).status_code
            ),
        )
        assert codes == [200] * 6


def test_past_the_global_cap_503_with_retry_after(backend: str) -> None:
    protection = Protection(max_in_flight=1, max_waiting=1, local_clients=tuple(parse_local("local")))
    with gateway(backend, protection) as url, httpx.Client(timeout=60) as client:
        answers = concurrently(6, lambda i: client.post(url + "/v1/chat/completions", json=SLOW))
    codes = [r.status_code for r in answers]
    # One in flight, one waiting: of six at once, at least four are refused with 503.
    assert set(codes) == {200, 503} and codes.count(503) >= 4, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["error"]["code"] == "server_busy" and int(busy.headers["Retry-After"]) >= 1


def test_a_polite_client_is_served_before_a_greedy_backlog() -> None:
    """One place; the host queues 6 slow requests (1 s each), then a visitor through the tunnel
    asks once: it is let in after at most one more of the host's, not after all of them."""
    protection = Protection(
        max_in_flight=1,
        max_waiting=32,
        rate_limit=0,
        trusted_proxies=tuple(parse_networks(TUNNEL)),
        local_clients=tuple(parse_networks(GATEWAY)),
    )
    with serve_backend(delay=1.0) as (slow_backend, _), gateway(slow_backend, protection) as url:
        finished: dict[str, float] = {}

        def greedy(i: int) -> int:
            code = httpx.post(url + "/v1/chat/completions", json=SLOW, timeout=60).status_code
            finished[f"host-{i}"] = time.monotonic()
            return code

        with ThreadPoolExecutor(6) as pool, from_address(TUNNEL) as tunnel:
            host = [pool.submit(greedy, i) for i in range(6)]
            time.sleep(0.5)  # the host's first is in, the others wait
            polite = tunnel.post(
                url + "/v1/chat/completions", json=SLOW, headers={"CF-Connecting-IP": "198.51.100.1"}
            )
            finished["visitor"] = time.monotonic()
            assert polite.status_code == 200
            assert [f.result() for f in host] == [200] * 6
    order = sorted(finished, key=finished.__getitem__)
    assert order.index("visitor") <= 2, order  # first come, first served: 6


def test_admission_lets_waiters_in_one_client_after_the_other() -> None:
    async def scenario() -> list[str]:
        admission = Admission(max_in_flight=1, max_waiting=16)
        served: list[str] = []
        first = await admission.enter("greedy")

        async def one(key: str) -> None:
            release = await admission.enter(key)
            served.append(key)
            await asyncio.sleep(0)
            release()

        tasks = [asyncio.create_task(one("greedy")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(one("a")), asyncio.create_task(one("b"))]
        # A waiter whose client went away gives up its turn.
        gone = asyncio.create_task(one("gone"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert admission.waiting == 7
        first()
        await asyncio.gather(*tasks)
        assert admission.in_flight == 0 and admission.waiting == 0
        return served

    assert asyncio.run(scenario()) == ["greedy", "a", "b", "greedy", "greedy", "greedy", "greedy"]


def test_admission_refuses_past_its_waiting_bound() -> None:
    async def scenario() -> ApiError:
        admission = Admission(max_in_flight=1, max_waiting=1)
        await admission.enter("a")
        waiter = asyncio.create_task(admission.enter("b"))
        await asyncio.sleep(0)
        try:
            await admission.enter("c")
        except ApiError as exc:
            waiter.cancel()
            return exc
        raise AssertionError("a third request was let wait")

    error = asyncio.run(scenario())
    assert error.status == 503 and int(error.headers["Retry-After"]) >= 1
