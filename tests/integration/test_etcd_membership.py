"""Routine membership changes under a running `confsync watch` and `confsync register`.

Members are replaced one by one (`etcdctl member remove`, `member add` on a new host): static
`etcd.endpoints` then name members that are gone. A daemon that only knew those was cut off
from a healthy cluster for good (its files stale, its registrations lapsed) until restarted
with new settings; it now learns the members' client URLs from the cluster and tries them
after the configured ones.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_members import find_etcdctl, remove_member
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


def _etcdctl(etcd_binary: str) -> str:
    found = find_etcdctl(etcd_binary)
    if found is None:
        pytest.skip(f"no etcdctl next to {etcd_binary}")
    return found


def _put(member: EtcdMember, key: str, value: str) -> bool:
    """One put; False while the cluster elects a leader after the removal."""
    try:
        client(member.endpoint).put(key, value)
        return True
    except Exception:
        return False


def test_watch_and_register_outlive_the_removal_of_their_only_configured_member(
        etcd_binary: str, cluster: list[EtcdMember], tmp_path: Path) -> None:
    gone, m1, _ = cluster
    etcdctl = _etcdctl(etcd_binary)
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "list",
                   "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/k"]\nmin_keys = 0')
    backend = HTTPBackend("web").start()
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {backend.port}\nid = "web-1"\nttl = "2s"\n'
                       'drain = "0s"\n'  # (no drain: a stop at the end deregisters at once)
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    c = client(m1.endpoint)
    c.put("/k/a", "1")
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", gone.endpoint,
                     "--wait-min", "0", log=tmp_path / "watch.log")
    r = RegisterProcess(tmp_path / "conf", gone.endpoint, "--hostname", "node-a",
                        log=tmp_path / "reg.log")
    key = "/services/web/instances/web-1"
    try:
        wait_for(lambda: read(dest) == "/k/a=1\n", timeout=15, what="first render")
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registration")
        time.sleep(1)  # a keepalive or two: the registrar asks for the members after one
        remove_member(etcdctl, gone, through=m1)
        gone.stop()  # (it stops by itself once it learns it was removed)
        wait_for(lambda: _put(m1, "/k/a", "2"), timeout=15, what="a put after the removal")
        wait_for(lambda: read(dest) == "/k/a=2\n", timeout=15,
                 what=f"the watch following the remaining members\n{w.output()[-2000:]}")
        # (One member failing is not "etcd unreachable": the next endpoint is asked at once.)
        wait_for(lambda: "trying the next endpoint" in r.output()
                 or ("etcd connected" in r.output().split("etcd unreachable")[-1]
                 and "etcd unreachable" in r.output()), timeout=15,
                 what=f"the registrar on another member\n{r.output()[-2000:]}")
        time.sleep(3)  # longer than the TTL: the lease is renewed through another member
        assert published(client(m1.endpoint), key) is not None
        assert "no member any more" in w.output()  # and the operator is told
    finally:
        w.stop()
        r.stop()
        backend.stop()


def test_a_registrar_with_nothing_registered_outlives_the_removal_of_its_only_member(
        etcd_binary: str, cluster: list[EtcdMember], tmp_path: Path) -> None:
    """A registration whose checks are down holds no lease, so no keepalive ever asked for the
    members: a standby instance whose configured member was replaced meanwhile could never
    register once its checks passed (etcd unreachable for good)."""
    gone, m1, _ = cluster
    etcdctl = _etcdctl(etcd_binary)
    port = free_port()  # nothing listens yet: the tcp check is down
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {port}\nid = "web-1"\nttl = "2s"\n'
                       'drain = "0s"\n'  # (no drain: a stop at the end deregisters at once)
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    r = RegisterProcess(tmp_path / "conf", gone.endpoint, "--hostname", "node-a",
                        log=tmp_path / "reg.log")
    key = "/services/web/instances/web-1"
    listener = None
    try:
        wait_for(lambda: "etcd connected" in r.output(), timeout=15, what="connected")
        time.sleep(1.5)  # a few asks of etcd (every ttl/3) while nothing is registered
        remove_member(etcdctl, gone, through=m1)
        gone.stop()
        wait_for(lambda: _put(m1, "/k/a", "2"), timeout=15, what="a put after the removal")
        listener = socket.create_server(("127.0.0.1", port))  # the check passes now
        wait_for(lambda: published(client(m1.endpoint), key) is not None, timeout=20,
                 what=f"registered through another member\n{r.output()[-2000:]}")
    finally:
        r.stop()
        if listener is not None:
            listener.close()
