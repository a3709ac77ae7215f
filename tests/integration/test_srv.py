"""Endpoints from DNS SRV records (`srv_domain`), served by a local DNS server on loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.errors import EXIT_OK, EXIT_STORE_UNAVAILABLE, StoreUnavailable
from confsync.stores.srv import resolve_endpoints
from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.dns_server import SrvServer
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port

DOMAIN = "etcd.confsync.test"
PLAIN = f"_etcd-client._tcp.{DOMAIN}"
SSL = f"_etcd-client-ssl._tcp.{DOMAIN}"


@pytest.fixture
def dns() -> Iterator[SrvServer]:
    with SrvServer({}) as server:
        yield server


def resource(tmp_path: Path, prefix: str) -> Path:
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "r", "{{ getv('/k/a') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\nprefix = "{prefix}"')
    return dest


def test_once_finds_etcd_by_srv(etcd: EtcdMember, dns: SrvServer, tmp_path: Path) -> None:
    prefix = f"/srv-{uuid.uuid4().hex[:8]}"
    client(etcd.endpoint).put(prefix + "/k/a", "from-srv")
    # Priority first: the live member (10) before a dead port (20).
    dns.resolver.records[PLAIN] = [(20, 10, free_port(), "localhost."),
                                   (10, 10, etcd.client_port, "localhost.")]
    dest = resource(tmp_path, prefix)
    result = confsync("once", "--confdir", str(tmp_path / "cd"), "--srv-domain", DOMAIN,
                      env={"CONFSYNC_ETCD_SRV_NAMESERVER": dns.address})
    assert result.returncode == EXIT_OK, result.stderr
    assert read(dest) == "from-srv\n"


def test_watch_follows_the_records_on_reconnect(
        etcd_binary: str, etcd_private: EtcdMember, dns: SrvServer, tmp_path: Path) -> None:
    """The records are read again for every new client: when the member they name dies and
    the records move to another etcd, the watch follows (as a fresh cluster: a reset)."""
    prefix = "/srv"
    client(etcd_private.endpoint).put(prefix + "/k/a", "first")
    dns.resolver.records[PLAIN] = [(10, 10, etcd_private.client_port, "localhost.")]
    dest = resource(tmp_path, prefix)
    config = tmp_path / "confsync.toml"
    config.write_text(f'[etcd]\nsrv_domain = "{DOMAIN}"\nsrv_nameserver = "{dns.address}"\n')
    w = WatchProcess("--config", str(config), "--confdir", str(tmp_path / "cd"), "--wait-min",
                     "0", log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(dest) == "first\n", timeout=15, what=f"first render\n{w.output()}")
        other = EtcdMember(etcd_binary, tmp_path / "other" / "data", token="other")
        (tmp_path / "other").mkdir()
        other.start()
        try:
            client(other.endpoint).put(prefix + "/k/a", "second")
            dns.resolver.records[PLAIN] = [(10, 10, other.client_port, "localhost.")]
            etcd_private.stop()
            wait_for(lambda: read(dest) == "second\n", timeout=30,
                     what=f"the member the records name now\n{w.output()[-3000:]}")
        finally:
            other.stop()
    finally:
        w.stop()


def test_ssl_records_come_first(dns: SrvServer) -> None:
    dns.resolver.records[PLAIN] = [(10, 10, 2379, "plain.example.")]
    dns.resolver.records[SSL] = [(10, 5, 2379, "b.example."), (10, 50, 2379, "a.example."),
                                 (5, 1, 2380, "first.example.")]
    assert resolve_endpoints(DOMAIN, dns.address) == (
        "https://first.example:2380", "https://a.example:2379", "https://b.example:2379")
    del dns.resolver.records[SSL]
    assert resolve_endpoints(DOMAIN, dns.address) == ("http://plain.example:2379",)


def test_confds_own_record_is_found_when_etcds_are_missing(dns: SrvServer) -> None:
    """confd asks `_<backend>._tcp.<domain>`: a zone written for confd's etcdv3 backend had no
    `_etcd-client` records, and confsync found no etcd at all (the README said the records
    were the same)."""
    confd = f"_etcdv3._tcp.{DOMAIN}"
    dns.resolver.records[confd] = [(10, 10, 2379, "c.example.")]
    assert resolve_endpoints(DOMAIN, dns.address) == ("http://c.example:2379",)
    assert resolve_endpoints(DOMAIN, dns.address, tls=True) == ("https://c.example:2379",)
    dns.resolver.records[PLAIN] = [(10, 10, 2379, "plain.example.")]
    assert resolve_endpoints(DOMAIN, dns.address) == ("http://plain.example:2379",)


def test_no_records_is_store_unavailable_naming_the_domain(dns: SrvServer,
                                                           tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=DOMAIN):
        resolve_endpoints(DOMAIN, dns.address)
    resource(tmp_path, "/none")
    result = confsync("once", "--confdir", str(tmp_path / "cd"), "--srv-domain", DOMAIN,
                      env={"CONFSYNC_ETCD_SRV_NAMESERVER": dns.address,
                           "CONFSYNC_ETCD_TIMEOUT": "2s"})
    assert result.returncode == EXIT_STORE_UNAVAILABLE
    assert DOMAIN in result.stderr


def test_grpc_snapshot_tries_every_member_the_records_name(etcd: EtcdMember,
                                                           dns: SrvServer) -> None:
    """The watch's snapshot (gRPC store) with the first-priority member dead: the next one the
    records name serves it, in the same call (not only after a retry)."""
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    prefix = f"/srv-{uuid.uuid4().hex[:8]}"
    client(etcd.endpoint).put(prefix + "/k/a", "second member")
    dns.resolver.records[PLAIN] = [(10, 10, free_port(), "localhost."),
                                   (20, 10, etcd.client_port, "localhost.")]
    store = EtcdStore(EtcdSettings(srv_domain=DOMAIN, srv_nameserver=dns.address, timeout=2.0))
    try:
        assert store.snapshot([prefix + "/"]).values == {prefix + "/k/a": b"second member"}
    finally:
        store.close()


def test_a_reconnect_while_dns_fails_uses_the_records_last_answer(etcd: EtcdMember,
                                                                  dns: SrvServer) -> None:
    """Every new client asked for the SRV records again: with DNS failing (SERVFAIL) and etcd
    fine, every reconnect failed (a registrar's lease lapsed). Their last answer serves now;
    a fresh answer wins again, and records that are gone (NXDOMAIN) are no failure for now."""
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    dns.resolver.records[PLAIN] = [(10, 10, etcd.client_port, "localhost.")]
    store = EtcdStore(EtcdSettings(srv_domain=DOMAIN, srv_nameserver=dns.address, timeout=1.0))
    try:
        store.new_client().close()
        dns.resolver.servfail = True
        fresh = store.new_client()
        fresh.get(b"k")
        fresh.close()
        moved = free_port()
        dns.resolver.records[PLAIN] = [(10, 10, moved, "localhost.")]
        dns.resolver.servfail = False
        assert store.endpoint_urls() == (f"http://localhost:{moved}",)
        from confsync.stores.srv import SrvLookupFailed

        del dns.resolver.records[PLAIN]
        with pytest.raises(StoreUnavailable) as raised:
            store.endpoint_urls()
        assert not isinstance(raised.value, SrvLookupFailed)
    finally:
        store.close()


def test_records_gone_are_not_replaced_by_their_last_answer_when_dns_then_fails(
        etcd: EtcdMember, dns: SrvServer) -> None:
    """DNS answering that the records are gone (NXDOMAIN) left their last answer in memory:
    when DNS then failed for now, a reconnect dialled the removed members again."""
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    dns.resolver.records[PLAIN] = [(10, 10, etcd.client_port, "localhost.")]
    store = EtcdStore(EtcdSettings(srv_domain=DOMAIN, srv_nameserver=dns.address, timeout=1.0))
    try:
        store.new_client().close()
        del dns.resolver.records[PLAIN]
        with pytest.raises(StoreUnavailable, match="no _etcd-client-ssl"):
            store.new_client()
        dns.resolver.servfail = True
        with pytest.raises(StoreUnavailable, match=r"SERVFAIL|answered"):
            store.new_client()
    finally:
        store.close()


def test_a_silent_dns_costs_a_reconnect_a_short_wait_not_the_timeout(
        etcd: EtcdMember, dns: SrvServer) -> None:
    """With the records' last answer in hand and a resolver that never answers, each new client
    waited out the whole lookup (`etcd.timeout`, here 2 s; a snapshot two) before using that
    answer, while a lease's TTL ran. Now it waits FALLBACK_WAIT at most (the lookup goes on
    in the background, one at a time), and an answer once DNS is back is taken."""
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    prefix = f"/srv-{uuid.uuid4().hex[:8]}"
    client(etcd.endpoint).put(prefix + "/k/a", "v")
    dns.resolver.records[PLAIN] = [(10, 10, etcd.client_port, "localhost.")]
    store = EtcdStore(EtcdSettings(srv_domain=DOMAIN, srv_nameserver=dns.address, timeout=2.0))
    try:
        store.new_client().close()
        dns.resolver.hang = True
        for _ in range(3):
            start = time.monotonic()
            fresh = store.new_client()
            fresh.get(b"k")
            fresh.close()
            assert time.monotonic() - start < 1.0
        start = time.monotonic()
        assert store.snapshot([prefix + "/"]).values == {prefix + "/k/a": b"v"}
        assert time.monotonic() - start < 1.5
        moved = free_port()
        dns.resolver.records[PLAIN] = [(10, 10, moved, "localhost.")]
        dns.resolver.hang = False
        deadline = time.monotonic() + 5.0
        while store.endpoint_urls() != (f"http://localhost:{moved}",):
            assert time.monotonic() < deadline, "the fresh answer was never taken"
            time.sleep(0.1)
    finally:
        store.close()


def test_watch_fails_over_at_once_while_dns_is_silent(
        etcd: EtcdMember, dns: SrvServer, tmp_path: Path) -> None:
    """The member a watch uses goes away while the resolver is silent: the reconnect asked
    for the records and waited out `etcd.timeout` (5 s by default; 5.4 s measured, and as
    much again for the snapshot) before using their last answer, the file stale meanwhile.
    It waits 0.5 s now and resumes through the other member the records named."""
    from tests.support.tcp_proxy import TcpProxy

    prefix = f"/srv-{uuid.uuid4().hex[:8]}"
    c = client(etcd.endpoint)
    c.put(prefix + "/k/a", "one")
    first, second = TcpProxy(etcd.client_port), TcpProxy(etcd.client_port)
    dns.resolver.records[PLAIN] = [(10, 10, first.port, "localhost."),
                                   (20, 10, second.port, "localhost.")]
    dest = resource(tmp_path, prefix)
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--srv-domain", DOMAIN, "--wait-min",
                     "0", log=tmp_path / "watch.log",
                     env={"CONFSYNC_ETCD_SRV_NAMESERVER": dns.address})
    try:
        wait_for(lambda: read(dest) == "one\n", timeout=15, what="first render")
        dns.resolver.hang = True
        first.close()
        c.put(prefix + "/k/a", "two")
        wait_for(lambda: read(dest) == "two\n", timeout=3,
                 what=f"the change through the other member\n{w.output()[-3000:]}")
    finally:
        w.stop()
        first.close()
        second.close()
        c.close()
