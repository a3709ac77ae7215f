"""`confsync register` with etcd found by DNS SRV: the default address is the one used to reach
the members the records name, not the loopback of the unused static endpoints default."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from confsync.register.run import default_address
from confsync.settings import EtcdSettings
from tests.support.dns_server import SrvServer

DOMAIN = "etcd.confsync.test"


def _route_source(ip: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((ip, 2379))  # a UDP connect sends nothing
        except OSError:
            return None
        return str(sock.getsockname()[0])


@pytest.fixture
def dns() -> Iterator[SrvServer]:
    with SrvServer({}) as server:
        yield server


def test_default_address_follows_the_srv_records(dns: SrvServer) -> None:
    member = "192.0.2.10"  # TEST-NET-1: routed by the default route, never reached
    expected = _route_source(member)
    if expected is None or expected.startswith("127."):
        pytest.skip("no route off loopback on this machine")
    dns.resolver.records[f"_etcd-client._tcp.{DOMAIN}"] = [(10, 10, 2379, member + ".")]
    settings = EtcdSettings(srv_domain=DOMAIN, srv_nameserver=dns.address)
    assert settings.endpoints == ("http://127.0.0.1:2379",)  # the unused default
    assert default_address(settings) == expected
    assert default_address(EtcdSettings()) == "127.0.0.1"
