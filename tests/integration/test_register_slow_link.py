"""`confsync register` over a slow link to etcd: 0.25 s each way (a congested WAN, a satellite
hop), a lease TTL of 2 s, so every call times out at ttl/3 = 0.67 s. A new connection takes
longer than that to come up; made anew after every timeout, it never did, and the registrar
never registered ("etcd unreachable"). A dead link must still be said as fast as before."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready
from tests.support.register import RegisterProcess, published, write_registration
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.etcd]


def _start(tmp_path: Path, proxy: TcpProxy, prefix: str, port: int,
           metrics: int) -> RegisterProcess:
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {port}\nid = "web-1"\nttl = "2s"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n'
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\nfall = 3\n')
    return RegisterProcess(tmp_path / "conf", proxy.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "register.log")


def test_a_slow_but_working_link_registers_and_stays(etcd: EtcdMember, backend: HTTPBackend,
                                                     tmp_path: Path) -> None:
    prefix = f"/slow{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    proxy = TcpProxy(etcd.client_port, latency=0.25)
    metrics = free_port()
    proc = _start(tmp_path, proxy, prefix, backend.port, metrics)
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, timeout=6,
                 what="registered over the slow link (it never was)")
        _, meta = c.get(key)
        created = int(meta.create_revision)
        time.sleep(3.0)  # 1.5 TTLs: kept alive over the slow link
        _, meta = c.get(key)
        assert meta is not None and int(meta.create_revision) == created, proc.output()
        assert ready(metrics)[0] == 200, proc.output()
    finally:
        proc.stop()
        proxy.close()
        c.close()


def test_a_dead_link_is_still_said_at_once(etcd: EtcdMember, backend: HTTPBackend,
                                           tmp_path: Path) -> None:
    """A link that carries nothing (every connection black-holed): "etcd unreachable" within
    the first call's timeout (0.67 s), not after the connection's budget, and /ready 503."""
    proxy = TcpProxy(etcd.client_port, latency=0.25)
    proxy.stall()
    metrics = free_port()
    proc = _start(tmp_path, proxy, f"/dead{uuid.uuid4().hex[:10]}", backend.port, metrics)
    try:
        wait_for(lambda: "registration(s) for host" in proc.output(), timeout=10,
                 what="the start")
        started = time.monotonic()
        wait_for(lambda: "WARNING register: etcd unreachable (" in proc.output(), timeout=3,
                 what="etcd said unreachable")
        assert time.monotonic() - started < 1.5, proc.output()
        status, body = ready(metrics)
        assert status == 503 and "etcd" in str(body), body
    finally:
        proc.stop()
        proxy.close()


def test_many_registrations_over_a_slow_link_all_stay_registered(etcd: EtcdMember,
                                                                  tmp_path: Path) -> None:
    """40 registrations, 25 ms each way, ttl 2 s: the step that writes the keys (one call
    each) outlasted the lease, which lapsed before the keepalive that came after it; the next
    lease lapsed the same way, so never more than about half were in etcd at once, for good.
    The lease is now renewed in the middle of the step when it is due, and /ready is not 200
    before every key is written (it said 200 once the lease was granted)."""
    prefix = f"/many{uuid.uuid4().hex[:10]}"
    count = 40
    for i in range(count):
        write_registration(tmp_path / "conf", f"web{i:02d}",
                           f'service = "web"\nport = {8000 + i}\nid = "web-{i}"\nttl = "2s"\n'
                           'address = "127.0.0.1"\ndrain = "0s"\n')
    proxy = TcpProxy(etcd.client_port, latency=0.025)
    metrics = free_port()
    proc = RegisterProcess(tmp_path / "conf", proxy.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "register.log")
    c = client(etcd.endpoint)
    ready_early: list[int] = []

    def leases() -> set[int]:
        return {int(meta.lease_id) for _, meta in c.get_prefix(prefix)}

    def all_registered() -> bool:
        said = ready(metrics)[0]  # (asked first: a 200 says every key was in etcd by then)
        present = len(list(c.get_prefix(prefix)))
        if said == 200 and present < count:
            ready_early.append(present)  # /ready 200 with keys still to be written
        return present == count

    try:
        wait_for(all_registered, timeout=40,
                 what=f"all {count} registered\n{proc.output()[-2000:]}")
        assert not ready_early, f"/ready 200 with only {ready_early} keys in etcd"
        held = leases()
        assert len(held) == 1, held
        until = time.monotonic() + 4.0  # 2 TTLs: every key kept, on the same lease
        while time.monotonic() < until:
            assert len(list(c.get_prefix(prefix))) == count, proc.output()[-3000:]
            time.sleep(0.2)
        assert leases() == held, proc.output()[-3000:]
    finally:
        proc.stop()
        proxy.close()
        c.close()
