"""Endpoint and check host names whose DNS resolution hangs or fails for now.

`getaddrinfo` has no timeout of its own: with a name server that never answers, glibc waits
its own `timeout` x `attempts` (here 30 s x 5), whatever `etcd.timeout` says. Each process
under test gets a resolv.conf naming a test name server (its own mount namespace: root only).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.errors import EXIT_OK
from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.dns_server import NameServer, resolv_wrapper_works
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(not resolv_wrapper_works(),
                                 reason="needs root and unshare --mount")]

NAME = "etcd.dns.test"


@pytest.fixture
def dns(etcd: EtcdMember) -> Iterator[NameServer]:
    with NameServer({NAME: ["127.0.0.1"]}) as server:
        yield server


def test_once_gives_a_hung_endpoint_name_one_timeout_and_reads_the_next(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path) -> None:
    """The gateway read connected with socket.create_connection, whose lookup is unbounded:
    `once` hung for minutes past `etcd.timeout` on the first endpoint's name."""
    client(etcd.endpoint).put(prefix + "/k", "v")
    write_resource(tmp_path, "r", "{{ getv('/k') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/k"]\nprefix = "{prefix}"')
    dns.hang = True
    hung = f"http://{NAME}:{etcd.endpoint.rsplit(':', 1)[1]}"
    start = time.monotonic()
    done = confsync("once", "--confdir", str(tmp_path), "--endpoints", f"{hung},{etcd.endpoint}",
                    env={"CONFSYNC_ETCD_TIMEOUT": "1s"}, timeout=20, wrapper=dns.wrapper(tmp_path))
    elapsed = time.monotonic() - start
    assert done.returncode == EXIT_OK, done.stderr
    assert read(tmp_path / "out") == "v\n"
    assert f"{hung}: resolving {NAME}: no answer from DNS within 1s); trying the next " \
           "endpoint" in done.stderr
    assert elapsed < 4.0, done.stderr
    assert dns.queries  # it did ask the test's name server


def test_register_waits_for_dns_to_tell_its_address_instead_of_exiting(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path) -> None:
    """A registration without `address` publishes the one used to reach etcd, found at start
    by resolving the endpoint's name. DNS failing for now there (SERVFAIL: a resolver not up
    yet at boot) was exit 2, "set `address`", which the unit does not restart: the node never
    registered. Now it asks again, through a resolver that does not answer at all too (each
    lookup bounded by `etcd.timeout`), and registers once DNS answers."""
    backend = HTTPBackend("web").start()
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {backend.port}\nid = "web-1"\nttl = "3s"\ndrain = "0s"\n'
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    key = f"{prefix}/services/web/instances/web-1"
    dns.servfail = True
    port = etcd.endpoint.rsplit(":", 1)[1]
    proc = RegisterProcess(tmp_path / "conf", f"http://{NAME}:{port}", "--prefix", prefix,
                           log=tmp_path / "register.log", env={"CONFSYNC_ETCD_TIMEOUT": "1s"},
                           wrapper=dns.wrapper(tmp_path))
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: "cannot tell the local address used to reach etcd yet" in
                 proc.output() or proc.proc.poll() is not None, 10, what="the first lookup")
        assert proc.proc.poll() is None, proc.output()
        dns.servfail, dns.hang = False, True
        asked = dns.queries
        wait_for(lambda: dns.queries > asked, 10, what="a lookup DNS does not answer")
        time.sleep(1.5)
        assert proc.proc.poll() is None, proc.output()
        dns.hang = False
        wait_for(lambda: published(c, key) is not None, 15, what="registered")
        value = published(c, key)
        assert value is not None and value["address"] == "127.0.0.1"
        assert proc.output().count("cannot tell the local address") == 1  # said once
    finally:
        proc.stop()
        c.close()
        backend.stop()


def test_a_template_lookup_dns_never_answers_holds_neither_the_loop_nor_the_file(
        dns: NameServer, tmp_path: Path) -> None:
    """lookupIP called getaddrinfo on the loop's thread, where render_timeout (an exception
    raised into the thread) cannot stop a C call: a silent name server held every resource
    and the heartbeat for the resolver's retries (here 150 s). Now the lookup fails for now
    within render_timeout; the file stays, the other resource is written."""
    dns.hosts["db.dns.test"] = ["10.0.0.1"]
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: 5432\n")
    write_resource(tmp_path / "cd", "a_db",
                   "{% for ip in lookupIP('db.dns.test') %}server {{ ip }}:"
                   "{{ getv('/app/port') }}\n{% endfor %}",
                   f'dest = "{tmp_path}/db"\nkeys = ["/app"]\n')
    write_resource(tmp_path / "cd", "z_plain", "port {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path}/plain"\nkeys = ["/app"]\n')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                     str(data), "--wait-min", "0", log=tmp_path / "watch.log",
                     env={"CONFSYNC_RENDER_TIMEOUT": "300ms"}, wrapper=dns.wrapper(tmp_path))
    try:
        wait_for(lambda: read(tmp_path / "db") == "server 10.0.0.1:5432\n", 20,
                 what="first render")
        dns.hang = True
        data.write_text("app:\n  port: 5433\n")
        wait_for(lambda: read(tmp_path / "plain") == "port 5433\n", 5,
                 what="the other resource, while DNS hangs")
        assert read(tmp_path / "db") == "server 10.0.0.1:5432\n"
        dns.hang = False
        wait_for(lambda: read(tmp_path / "db") == "server 10.0.0.1:5433\n", 10,
                 what="the retry once DNS answers")
    finally:
        assert w.stop() == 0


def test_a_check_on_a_name_dns_stops_answering_says_so_and_recovers_at_once(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path) -> None:
    """A probe sat in getaddrinfo for the resolver's retries: reported only as "stuck", and
    the instance stayed out of the pool until the stuck lookup's next retry (20 s measured
    here) after DNS answered again. The check's timeout now bounds the lookup too: the reason
    names DNS, and the key is back within a few intervals. The other registration's key,
    on the same lease, never moves."""
    backend = HTTPBackend("web").start()
    dns.hosts["web.dns.test"] = ["127.0.0.1"]
    common = f'port = {backend.port}\nttl = "3s"\naddress = "127.0.0.1"\ndrain = "0s"\n'
    write_registration(tmp_path / "conf", "a",
                       f'service = "a"\nid = "a-1"\n{common}[[check]]\ntype = "http"\n'
                       f'url = "http://web.dns.test:{backend.port}/"\ninterval = "300ms"\n'
                       'timeout = "300ms"\nrise = 1\nfall = 1\n')
    write_registration(tmp_path / "conf", "b",
                       f'service = "b"\nid = "b-1"\n{common}[[check]]\ntype = "tcp"\n'
                       'interval = "300ms"\nrise = 1\n')
    a, b = (f"{prefix}/services/{s}/instances/{s}-1" for s in "ab")
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           log=tmp_path / "register.log", wrapper=dns.wrapper(tmp_path))
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, a) is not None and published(c, b) is not None, 15,
                 what="both registered")
        _, meta = c.get(b)
        created = int(meta.create_revision)
        dns.hang = True
        wait_for(lambda: published(c, a) is None, 5, what="a down while DNS hangs")
        time.sleep(1.0)
        out = proc.output()
        assert "a check 0 down: GET http://web.dns.test:" in out, out
        assert "resolving web.dns.test: no answer from DNS within 0.3s" in out, out
        dns.hang = False
        resumed = time.monotonic()
        wait_for(lambda: published(c, a) is not None, 10, what="a back once DNS answers")
        assert time.monotonic() - resumed < 3.0
        _, meta = c.get(b)
        assert int(meta.create_revision) == created
    finally:
        proc.stop()
        c.close()
        backend.stop()


def test_asking_again_while_dns_hangs_does_not_pile_up_lookups(
        dns: NameServer, tmp_path: Path) -> None:
    """Every caller gives up at its deadline, but its lookup's thread waits for the resolver
    (150 s here): a caller asking every 50 ms must not leave a thread per ask behind."""
    dns.hang = True
    script = ("import threading, time\n"
              "from confsync import resolve\n"
              "failed = 0\n"
              "for _ in range(40):\n"
              "    try:\n"
              "        resolve.getaddrinfo('stuck.dns.test', 80, timeout=0.05)\n"
              "    except OSError as exc:\n"
              "        failed += 1\n"
              "        why = str(exc)\n"
              "print(failed, sum(t.name == 'resolve' for t in threading.enumerate()), why)\n")
    done = subprocess.run([*dns.wrapper(tmp_path), sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    failed, threads, why = done.stdout.split(" ", 2)
    assert failed == "40", done.stderr
    assert 1 <= int(threads) <= 3, done.stdout  # one per FRESH second, not one per ask
    assert why.strip() == "resolving stuck.dns.test: no answer from DNS within 0.05s"


def test_an_endpoint_name_dns_fails_is_named_in_the_error(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path) -> None:
    """The etcd client replaces gRPC's error with its own, "ConnectionFailedError: etcd
    connection failed", which said nothing of the resolver; gRPC's words now follow it.
    And once DNS answers, the registrar registers."""
    write_registration(tmp_path / "conf", "web",
                       'service = "web"\nport = 1\nid = "web-1"\naddress = "127.0.0.1"\n'
                       'ttl = "3s"\ndrain = "0s"\n[[check]]\ntype = "exec"\n'
                       'command = ["true"]\ninterval = "200ms"\nrise = 1\n')
    key = f"{prefix}/services/web/instances/web-1"
    dns.servfail = True
    port = etcd.endpoint.rsplit(":", 1)[1]
    proc = RegisterProcess(tmp_path / "conf", f"http://{NAME}:{port}", "--prefix", prefix,
                           log=tmp_path / "register.log", wrapper=dns.wrapper(tmp_path))
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: "etcd unreachable at start" in proc.output(), 10,
                 what="the start's read failed")
        line = next(line for line in proc.output().splitlines()
                    if "etcd unreachable at start" in line)
        assert "etcd connection failed (UNAVAILABLE: " in line, line
        assert f"resolving {NAME}" in line, line
        dns.servfail = False
        wait_for(lambda: published(c, key) is not None, 10, what="registered once DNS answers")
    finally:
        proc.stop()
        c.close()


@pytest.mark.parametrize("outage", ["servfail", "hang"])
def test_a_dns_outage_longer_than_the_lease_keeps_the_key_through_reconnects(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path, outage: str) -> None:
    """Each reconnect builds a new channel, which resolved the endpoint's name again: with DNS
    down (etcd fine), every one failed, the lease lapsed and the node left its pools. A
    reconnect now dials the name's last good address while a fresh lookup fails."""
    from tests.support.tcp_proxy import TcpProxy

    write_registration(tmp_path / "conf", "web",
                       'service = "web"\nport = 1\nid = "web-1"\naddress = "127.0.0.1"\n'
                       'ttl = "3s"\ndrain = "0s"\n[[check]]\ntype = "exec"\n'
                       'command = ["true"]\ninterval = "200ms"\nrise = 1\n')
    key = f"{prefix}/services/web/instances/web-1"
    proxy = TcpProxy(etcd.client_port)
    proc = RegisterProcess(tmp_path / "conf", f"http://{NAME}:{proxy.port}", "--prefix", prefix,
                           log=tmp_path / "register.log", env={"CONFSYNC_ETCD_TIMEOUT": "1s"},
                           wrapper=dns.wrapper(tmp_path))
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, 15, what="registered")
        _, meta = c.get(key)
        created = int(meta.create_revision)
        setattr(dns, outage, True)
        # The open connection goes silent (gRPC would carry on through a reset with the
        # address it has): the registrar must make a new one.
        proxy.stall(new_connections=False)
        time.sleep(4.5)  # past the 3 s lease
        _, meta = c.get(key)
        assert meta is not None and int(meta.create_revision) == created, proc.output()
        assert proc.proc.poll() is None, proc.output()
        assert f"etcd endpoint {NAME}:{proxy.port}: DNS fails for now" in proc.output()
        # DNS answers again, with a new address (etcd moved; nothing at the old one): a fresh
        # answer wins.
        dns.hosts[NAME] = [dns.ip]
        setattr(dns, outage, False)
        proxy.close()
        proxy = TcpProxy(etcd.client_port, port=proxy.port, host=dns.ip)
        wait_for(lambda: "DNS answers again" in proc.output(), 10, what="dialled by name")
        time.sleep(3.5)
        _, meta = c.get(key)
        assert meta is not None and int(meta.create_revision) == created, proc.output()
        assert proxy.connections(), "not dialled at the new address"
    finally:
        proc.stop()
        proxy.close()
        c.close()


# Connects a fresh client to each endpoint per line read, and prints what came of it.
_CONNECT = """
import sys
from pathlib import Path
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
ca_cert = Path(sys.argv[1]) if sys.argv[1] != "-" else None  # "-": no TLS
stores = [EtcdStore(EtcdSettings(endpoints=(url,), ca_cert=ca_cert, timeout=2.0))
          for url in sys.argv[2:]]
for _ in sys.stdin:
    outcomes = []
    for store in stores:
        try:
            client = store.new_client()
            client.get(b"k")
            client.close()
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append("failed")
    print(" ".join(outcomes), flush=True)
"""


class _Connector:
    """A process (resolving through `dns`) that connects a fresh client per `connect()`."""

    def __init__(self, dns: NameServer, directory: Path, ca_cert: str, *urls: str) -> None:
        self.proc = subprocess.Popen([*dns.wrapper(directory), sys.executable, "-c", _CONNECT,
                                      ca_cert, *urls], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO, env={"PYTHONPATH": str(REPO)})

    def connect(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> str:
        """Its stderr."""
        self.proc.kill()
        return self.proc.communicate(timeout=10)[1]


def _loopback_addresses(count: int) -> list[str]:
    """Distinct random 127/8 addresses (apart from other tests' and from 127.0.0.1)."""
    import random

    base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}."
    return [base + str(last) for last in random.sample(range(1, 255), count)]


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_every_address_of_the_last_answer_is_dialled_while_dns_fails(
        etcd: EtcdMember, dns: NameServer, tmp_path: Path, down: str) -> None:
    """Only the first address of a name's last answer was kept: during a DNS outage with the
    member at that address down (refused, or silent), the name's other members were never
    tried and every reconnect failed. Each address of the last answer is dialled in turn
    now, whichever of the two is down."""
    from tests.support.tcp_proxy import TcpProxy

    first, second = _loopback_addresses(2)
    proxies = {first: TcpProxy(etcd.client_port, host=first)}
    port = proxies[first].port
    proxies[second] = TcpProxy(etcd.client_port, port=port, host=second)
    dns.hosts[NAME] = [first, second]
    connector = _Connector(dns, tmp_path, "-", f"http://{NAME}:{port}")
    try:
        assert connector.connect() == "ok"  # DNS up: by name
        time.sleep(0.3)  # (the name's addresses are kept by a lookup beside the connect)
        dns.servfail = True
        for dead, live in ((first, second), (second, first)):
            if down == "refused":
                proxies[dead].close()
            else:
                proxies[dead].stall()
            before = proxies[live].accepted
            start = time.monotonic()
            assert connector.connect() == "ok", f"{dead} down"
            assert time.monotonic() - start < 2.0
            assert proxies[live].accepted > before
            proxies[dead].close()
            proxies[dead] = TcpProxy(etcd.client_port, port=port, host=dead)
    finally:
        err = connector.stop()
        for proxy in proxies.values():
            proxy.close()
    assert "dialling its last addresses in turn" in err, err


def test_a_last_answer_of_both_families_is_dialled_in_turn(
        etcd: EtcdMember, dns: NameServer, tmp_path: Path) -> None:
    """A name with IPv6 and IPv4 addresses (etcd listening on the IPv4 one only): while DNS
    fails, its last answer is dialled as one target of both families, in turn."""
    dns.hosts[NAME] = ["::1", "127.0.0.1"]
    connector = _Connector(dns, tmp_path, "-", f"http://{NAME}:{etcd.client_port}")
    try:
        assert connector.connect() == "ok"  # DNS up: by name
        time.sleep(0.3)  # (the name's addresses are kept by a lookup beside the connect)
        dns.servfail = True
        assert connector.connect() == "ok"
    finally:
        err = connector.stop()
    assert "dialling its last addresses in turn" in err, err
    assert "::1" in err and "127.0.0.1" in err, err


def test_the_last_address_is_dialled_with_tls_verifying_the_name(
        etcd_binary: str, dns: NameServer, tmp_path: Path) -> None:
    """The server certificate names only etcd.dns.test (not 127.0.0.1): a client dialling
    the last address while DNS fails connects only if TLS checks the name it was given; a
    name the certificate does not cover is refused alike with DNS up or down."""
    from tests.support.certs import make_pki
    from tests.support.etcd_server import start_single

    pki = make_pki(tmp_path / "pki", server_names=(NAME,))
    member = start_single(etcd_binary, tmp_path / "etcd", scheme="https", extra_args=[
        "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key)])
    dns.hosts["other.dns.test"] = ["127.0.0.1"]
    urls = [f"https://{host}:{member.client_port}" for host in (NAME, "other.dns.test")]
    proc = subprocess.Popen([*dns.wrapper(tmp_path), sys.executable, "-c", _CONNECT,
                             str(pki.ca_cert), *urls], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert proc.stdin is not None and proc.stdout is not None

    def connect() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert connect() == "ok failed"  # DNS up: by name
        time.sleep(0.3)  # (the name's address is kept by a lookup beside the connect)
        dns.servfail = True
        assert connect() == "ok failed"  # DNS down: the last address, the same verdicts
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        member.stop()
    assert "DNS fails for now" in err, err


def test_watch_reconnects_through_the_last_address_while_dns_fails(
        etcd: EtcdMember, dns: NameServer, prefix: str, tmp_path: Path) -> None:
    """A watch lost (every connection reset) made a new client that resolved the name again:
    with DNS failing and etcd fine, `watch` stayed degraded and the file stale until DNS came
    back. It now resumes at the name's last address."""
    from tests.support.tcp_proxy import TcpProxy

    c = client(etcd.endpoint)
    c.put(prefix + "/k", "one")
    write_resource(tmp_path / "cd", "r", "{{ getv('/k') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/k"]\nprefix = "{prefix}"')
    proxy = TcpProxy(etcd.client_port)
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints",
                     f"http://{NAME}:{proxy.port}", "--wait-min", "0",
                     log=tmp_path / "watch.log", env={"CONFSYNC_ETCD_TIMEOUT": "1s"},
                     wrapper=dns.wrapper(tmp_path))
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n", 15, what="first render")
        time.sleep(0.3)  # (the name's address is kept by a lookup beside the connect)
        dns.servfail = True
        proxy.close()
        proxy = TcpProxy(etcd.client_port, port=proxy.port)
        c.put(prefix + "/k", "two")
        wait_for(lambda: read(tmp_path / "out") == "two\n", 8,
                 what="the change, while DNS fails")
    finally:
        assert w.stop() == 0
        proxy.close()
        c.close()
