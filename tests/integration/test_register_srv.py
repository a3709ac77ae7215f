"""`confsync register` with etcd found by DNS SRV: the default address is the one used to reach
the members the records name, not the loopback of the unused static endpoints default; and the
registrar end to end, served by a test DNS server and a real etcd."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.register.run import default_address
from confsync.settings import EtcdSettings
from tests.support.daemon import wait_for
from tests.support.dns_server import SrvServer
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.register import RegisterProcess, published, write_registration
from tests.support.tcp_proxy import TcpProxy

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


PLAIN = f"_etcd-client._tcp.{DOMAIN}"


def _srv_registrar(tmp_path: Path, dns: SrvServer, prefix: str, address: str = "",
                   timeout: str = "1s") -> RegisterProcess:
    """`confsync register` finding etcd by SRV only; its registration web-1 on a 3 s lease."""
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = 1\nid = "web-1"\n{address}ttl = "3s"\n'
                       'drain = "0s"\n[[check]]\ntype = "exec"\ncommand = ["true"]\n'
                       'interval = "200ms"\nrise = 1\n')
    return RegisterProcess(tmp_path / "conf", None, "--prefix", prefix,
                           log=tmp_path / "register.log",
                           env={"CONFSYNC_ETCD_SRV_DOMAIN": DOMAIN,
                                "CONFSYNC_ETCD_SRV_NAMESERVER": dns.address,
                                "CONFSYNC_ETCD_TIMEOUT": timeout})


@pytest.mark.etcd
def test_register_finds_etcd_by_srv_and_follows_the_records(
        etcd: EtcdMember, dns: SrvServer, prefix: str, tmp_path: Path) -> None:
    """End to end: the key appears through the member the records name; when the records
    move to another member and the first goes away, the registrar follows them on its next
    connection and the key stays on its lease (no lapse, no re-registration)."""
    first = TcpProxy(etcd.client_port)
    second = TcpProxy(etcd.client_port)
    dns.resolver.records[PLAIN] = [(10, 10, first.port, "localhost.")]
    proc = _srv_registrar(tmp_path, dns, prefix)
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, 15, what="registered through SRV")
        value = published(c, key)
        assert value is not None and value["address"] == "127.0.0.1"  # by the SRV target
        assert first.accepted and not second.accepted
        _, meta = c.get(key)
        created = int(meta.create_revision)
        dns.resolver.records[PLAIN] = [(10, 10, second.port, "localhost.")]
        first.close()
        wait_for(lambda: second.accepted > 0, 10, what="a connection to the member the "
                 f"records name now\n{proc.output()[-3000:]}")
        time.sleep(3.5)  # past the 3 s lease: keepalives go through the new member
        _, meta = c.get(key)
        assert meta is not None and int(meta.create_revision) == created, proc.output()
        assert proc.proc.poll() is None, proc.output()
    finally:
        proc.stop()
        first.close()
        second.close()
        c.close()


@pytest.mark.etcd
@pytest.mark.parametrize("outage", ["servfail", "hang"])
def test_register_with_srv_waits_for_dns_failing_at_start(
        etcd: EtcdMember, dns: SrvServer, prefix: str, tmp_path: Path, outage: str) -> None:
    """A registration without `address` publishes the one used to reach the members the
    records name. SRV records DNS could not give at start (SERVFAIL or silence: a resolver
    not up yet at boot) ended `register` with exit 3 ("store unavailable"), which the unit
    does not restart; it asks again now and registers once DNS answers, as with an endpoint
    name DNS cannot resolve for now."""
    dns.resolver.records[PLAIN] = [(10, 10, etcd.client_port, "localhost.")]
    setattr(dns.resolver, outage, True)
    proc = _srv_registrar(tmp_path, dns, prefix)
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    try:
        asked = dns.resolver.queries
        wait_for(lambda: dns.resolver.queries > asked + 1 or proc.proc.poll() is not None,
                 10, what="the start's lookups")
        time.sleep(1.5)
        assert proc.proc.poll() is None, proc.output()
        assert proc.output().count("cannot tell the local address used to reach etcd yet") == 1
        setattr(dns.resolver, outage, False)
        wait_for(lambda: published(c, key) is not None, 15,
                 what=f"registered once DNS answers\n{proc.output()[-3000:]}")
    finally:
        proc.stop()
        c.close()


@pytest.mark.etcd
def test_register_follows_the_records_to_another_cluster(
        etcd_binary: str, etcd_private: EtcdMember, dns: SrvServer, tmp_path: Path) -> None:
    """The records move to a member of another cluster (etcd rebuilt elsewhere) and the old
    one stops: the registrar's lease is unknown there, so it grants a new one and registers."""
    dns.resolver.records[PLAIN] = [(10, 10, etcd_private.client_port, "localhost.")]
    proc = _srv_registrar(tmp_path, dns, "/p")
    key = "/p/services/web/instances/web-1"
    (tmp_path / "other").mkdir()
    other = EtcdMember(etcd_binary, tmp_path / "other" / "data", token="other")
    other.start()
    old, new = client(etcd_private.endpoint), client(other.endpoint)
    try:
        wait_for(lambda: published(old, key) is not None, 15, what="registered")
        dns.resolver.records[PLAIN] = [(10, 10, other.client_port, "localhost.")]
        etcd_private.stop()
        wait_for(lambda: published(new, key) is not None, 10,
                 what=f"registered in the other cluster\n{proc.output()[-3000:]}")
    finally:
        proc.stop()
        old.close()
        new.close()
        other.stop()

