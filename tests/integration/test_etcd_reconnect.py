"""Reconnecting through dead endpoints: a `confsync watch` (and `register`) whose list names
members that are gone (refused) or silent (a host off behind a dropping firewall, a frozen
process: only a timeout tells) before the live ones.

Each watch attempt used to try one endpoint, and a dead one cost a follower backoff step,
a silent one its whole call timeout (etcd.timeout, 5 s) on top: measured on this layout, the
first render 10.0 s after start and the put after a kill of the member in use 22.2-22.6 s
after the kill. An attempt now tries every endpoint, the silent ones for at most 1 s in all
(1 s each, waited for in turn: 2.0 s and 4.2 s), and those that did not connect are tried
last for a while: 1.0 s and 2.1 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.black_hole import black_holes
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client, has_quorum
from tests.support.etcd_members import member_in_use
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd]


def test_a_watch_passes_dead_and_silent_endpoints_within_one_attempt(
        cluster: list[EtcdMember], tmp_path: Path) -> None:
    m0, m1, m2 = cluster
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "list",
                   "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/k"]\nmin_keys = 0')
    client(m1.endpoint).put("/k/a", "0")
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with black_holes(6) as silent:
        endpoints = [silent[0], refused, silent[1], m0.endpoint, *silent[2:], m1.endpoint,
                     m2.endpoint]
        w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", ",".join(endpoints),
                         "--wait-min", "0", log=tmp_path / "watch.log")
        try:
            w.wait_log("watching with etcd backend", timeout=30)
            started = time.monotonic()
            wait_for(lambda: read(dest) == "/k/a=0\n", timeout=30, what="first render")
            first = time.monotonic() - started
            assert first < 6, f"first render {first:.1f}s after start\n{w.output()[-3000:]}"

            wait_for(lambda: member_in_use(w.proc.pid, cluster) is not None, timeout=10,
                     what="the watch's etcd connection")
            used = member_in_use(w.proc.pid, cluster)
            assert used is m0  # (the first live one, the rotation kept on it)
            used.kill()
            killed = time.monotonic()
            wait_for(lambda: has_quorum(m1.endpoint), timeout=15, what="quorum of two")
            client(m1.endpoint).put("/k/a", "1")
            wait_for(lambda: read(dest) == "/k/a=1\n", timeout=30,
                     what=f"the put after the kill\n{w.output()[-3000:]}")
            after_kill = time.monotonic() - killed
            print(f"first render {first:.2f}s, put after the kill {after_kill:.2f}s")
            assert after_kill < 15, f"the put reached the file {after_kill:.1f}s after the kill"
        finally:
            w.stop()


@contextlib.contextmanager
def _member_killed_under_a_registrar(
        cluster: list[EtcdMember], backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess], ttl: int,
        silent_count: int) -> Iterator[tuple[RegisterProcess, Any, str, int, float]]:
    """A registrar on a member, `silent_count` silent endpoints listed after it, then the
    others; the member killed: (registrar, client of another, key, its lease, kill time)."""
    leader = client(cluster[0].endpoint).status().leader.name
    # (Not the leader: a new leader extends every lease, which would hide a lapse.)
    used = next(m for m in cluster if m.name != leader)
    others = [m for m in cluster if m is not used]
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {backend.port}\nid = "web-1"\nttl = "{ttl}s"\n'
                       'drain = "0s"\n'  # (no drain: the stop at the end deregisters at once)
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    key = "/services/web/instances/web-1"
    c = client(others[0].endpoint)
    with black_holes(silent_count) as silent:
        r = RegisterProcess(tmp_path / "conf",
                            ",".join([used.endpoint, *silent, *(m.endpoint for m in others)]),
                            "--hostname", "node-a", log=tmp_path / "reg.log")
        procs.append(r)
        wait_for(lambda: c.get(key)[0] is not None, timeout=20, what="registered")
        lease = c.get(key)[1].lease_id
        wait_for(lambda: member_in_use(r.proc.pid, cluster) is used, timeout=10,
                 what="the registrar on the first endpoint")
        used.kill()
        yield r, c, key, lease, time.monotonic()


def test_a_registrar_keeps_its_lease_through_silent_endpoints_after_its_member_dies(
        cluster: list[EtcdMember], backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """Its calls time out at ttl/3 (3.3 s): each silent endpoint after the dead member cost
    that, and three of them let the lease lapse (the key gone 10.5 s after the kill, back
    with a new lease at 12.6 s). Now they cost 1 s in all: renewed 4-5 s after the kill."""
    with _member_killed_under_a_registrar(cluster, backend, tmp_path, procs, 10, 3) as (
            r, c, key, lease, killed):
        while True:
            since = time.monotonic() - killed
            value, meta = c.get(key)
            assert value is not None and meta.lease_id == lease, \
                f"the registration lapsed {since:.1f}s after the kill\n{r.output()[-3000:]}"
            left = int(c.get_lease_info(lease).TTL)
            if left > 10 - since + 1.5:  # renewed after the kill
                break
            assert since < 12, f"not renewed in {since:.1f}s\n{r.output()[-3000:]}"
            time.sleep(0.1)
        print(f"lease renewed {since:.2f}s after the kill")


def test_a_registrar_with_a_short_lease_keeps_it_through_silent_endpoints(
        cluster: list[EtcdMember], backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """A 3 s lease: calls, the connect wait included, are limited to ttl/3 = 1 s. The silent
    endpoints after the member that died cost 1 s each, waited for in turn, and the lease
    lapsed 3.2-3.4 s after the kill; their connections are now begun at once and cost the
    wait once."""
    with _member_killed_under_a_registrar(cluster, backend, tmp_path, procs, 3, 2) as (
            r, c, key, lease, killed):
        while (since := time.monotonic() - killed) < 8:  # (the lease renewed throughout)
            value, meta = c.get(key)
            assert value is not None and meta.lease_id == lease, \
                f"the registration lapsed {since:.1f}s after the kill\n{r.output()[-3000:]}"
            time.sleep(0.1)
