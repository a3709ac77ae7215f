"""`confsync register` while the etcd member it talks to restarts (an upgrade, a reboot) and a
quorum stays up: nothing to report, nothing in /ready."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.etcd_client import client, has_quorum
from tests.support.etcd_members import member_in_use
from tests.support.etcd_server import EtcdMember, discard, free_port, start_cluster
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd]


@pytest.fixture
def cluster(etcd_binary: str, tmp_path: Path) -> Iterator[list[EtcdMember]]:
    members = start_cluster(etcd_binary, tmp_path / "cluster")
    wait_for(lambda: has_quorum(members[0].endpoint), timeout=20, what="cluster quorum")
    yield members
    discard(members)


def test_the_member_in_use_restarting_is_not_etcd_unreachable(
        cluster: list[EtcdMember], backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """One failed call against one member said "etcd unreachable" (a WARNING, /ready 503)
    while two of three members served: at every member restart of a rolling etcd upgrade."""
    prefix = f"/r{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nid = "web-1"\nport = {backend.port}\n'
                       'address = "127.0.0.1"\nttl = "3s"\ndrain = "0s"\n'
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    metrics = free_port()
    proc = RegisterProcess(tmp_path / "conf", ",".join(m.endpoint for m in cluster),
                           "--prefix", prefix, "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "r.log")
    procs.append(proc)
    wait_for(lambda: ready(metrics)[0] == 200, timeout=15, what="registered and ready")
    wait_for(lambda: member_in_use(proc.proc.pid, cluster) is not None, what="its member")
    used = member_in_use(proc.proc.pid, cluster)
    assert used is not None
    other = client(next(m for m in cluster if m is not used).endpoint)
    seen: list[tuple[int, object]] = []
    absent: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            status, body = ready(metrics)
            if status != 200:
                seen.append((status, body.get("reasons")))
            if other.get(key)[0] is None:
                absent.append(time.monotonic())

    thread = threading.Thread(target=watch, daemon=True)
    logged = len(proc.output())
    thread.start()
    try:
        used.stop()
        time.sleep(3)  # three keepalives (ttl/3) with the member away
        used.start()
        time.sleep(1)
    finally:
        done.set()
        thread.join(5)
    assert seen == [], f"/ready not 200 with a quorum up: {seen[:3]}"
    assert "etcd unreachable" not in proc.output()[logged:]
    assert absent == []
