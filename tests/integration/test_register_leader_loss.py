"""`confsync register` while its etcd cluster has no leader for longer than the lease's TTL.

Without a leader etcd expires no lease: the registrar gives its lease up by its own count
(it cannot renew it), and the new leader extends every lease by a whole TTL when it is
elected. A key of ours left on that lease is still ours: one whose checks went down meanwhile
stayed "ready" for that TTL (consumers sent traffic to an instance known to be down), and a
stop meanwhile said "nothing to revoke", exit 0, with the key left in etcd.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.etcd_client import client, has_quorum
from tests.support.etcd_server import EtcdMember
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


def _registered_then_leaderless(cluster: list[EtcdMember], tmp_path: Path,
                                procs: list[RegisterProcess],
                                ttl: str) -> tuple[RegisterProcess, str, int, Path]:
    """A registrar (an exec check: healthy while the file returned exists) registered through
    cluster[0], then cluster[0] left without a leader until the registrar has given its lease
    up. Returns the registrar, its key, the lease given up and the check's file."""
    prefix = f"/r{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    up = tmp_path / "up"
    up.write_text("")
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nid = "web-1"\nport = 8080\naddress = "127.0.0.1"\n'
                       f'ttl = "{ttl}"\ndrain = "0s"\n[[check]]\ntype = "exec"\n'
                       f'command = ["test", "-e", {json.dumps(str(up))}]\n'
                       'interval = "200ms"\nrise = 1\nfall = 1\n')
    proc = RegisterProcess(tmp_path / "conf", cluster[0].endpoint, "--prefix", prefix,
                           log=tmp_path / "r.log")
    procs.append(proc)
    c = client(cluster[0].endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registered")
        lease = int(c.get(key)[1].lease_id)
    finally:
        c.close()
    cluster[1].kill()
    cluster[2].kill()  # cluster[0] is left without a leader: no lease expires, none is renewed
    wait_for(lambda: f"lease {lease:x} lapsed" in proc.output(), timeout=15,
             what=f"the registrar giving its lease up\n{proc.output()[-3000:]}")
    return proc, key, lease, up


def _leader_again(cluster: list[EtcdMember]) -> None:
    cluster[1].start()
    cluster[2].start()
    wait_for(lambda: has_quorum(cluster[0].endpoint), timeout=30, what="a leader again")


def test_a_key_left_on_a_lease_given_up_without_a_leader_is_deleted_when_etcd_is_back(
        cluster: list[EtcdMember], tmp_path: Path, procs: list[RegisterProcess]) -> None:
    proc, key, lease, up = _registered_then_leaderless(cluster, tmp_path, procs, "4s")
    up.unlink()
    wait_for(lambda: "ready -> absent" in proc.output(), timeout=10, what="the check down")
    _leader_again(cluster)
    c = client(cluster[0].endpoint)
    try:
        raw, meta = c.get(key)
        # (the new leader extended the lease: etcd holds the "ready" of a down instance)
        assert raw is None or int(meta.lease_id) == lease, (raw, meta)
        wait_for(lambda: published(c, key) is None, timeout=15, what="the stale key gone")
        # Deleted by the registrar, not expired with that lease a TTL later.
        assert int(c.get_lease_info(lease).TTL) > 0, proc.output()[-3000:]
    finally:
        c.close()


def test_a_stop_without_a_leader_after_the_lease_was_given_up_says_its_key_may_stay(
        cluster: list[EtcdMember], tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """The stop found no lease (given up by the registrar's own count) and said "no lease
    held; nothing to revoke", exit 0, while etcd held the key on that lease, "ready", for a
    whole TTL after a leader came back: a clean stop, to the unit, of a node left in its pool.
    It now tries that lease's revoke too, and says what may be left (exit 3)."""
    proc, key, lease, _ = _registered_then_leaderless(cluster, tmp_path, procs, "3s")
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 3, proc.output()[-3000:]
    out = proc.output()
    assert f"could not revoke lease {lease:x}" in out and key in out.split(
        f"could not revoke lease {lease:x}")[1], out[-3000:]
    _leader_again(cluster)
    c = client(cluster[0].endpoint)
    try:
        # What the warning said: the key was there, on that lease, after the stop.
        raw, meta = c.get(key)
        assert raw is None or int(meta.lease_id) == lease
    finally:
        c.close()
