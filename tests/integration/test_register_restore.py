"""`confsync register` against an etcd restored from a backup (its data directory as it was:
a VM or volume snapshot rolled back), with the real process and a real etcd."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import ready
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]

TTL = 3


def _start(procs: list[RegisterProcess], tmp_path: Path, etcd: EtcdMember, prefix: str,
           name: str) -> tuple[RegisterProcess, int]:
    metrics = free_port()
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix, "--hostname",
                           "node-a", "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / f"{name}.log")
    procs.append(proc)
    return proc, metrics


def _restart_etcd_from(etcd: EtcdMember, backup: Path | None, save: Path | None) -> None:
    """Kill etcd, save its data directory to `save` and/or put `backup` in its place, start it."""
    etcd.kill()
    if save is not None:
        shutil.copytree(etcd.data_dir, save)
    if backup is not None:
        shutil.rmtree(etcd.data_dir)
        shutil.copytree(backup, etcd.data_dir)
    etcd.start()


def test_a_backup_holding_an_earlier_runs_key_is_taken_over_not_called_a_clone(
        etcd_private: EtcdMember, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """etcd rolled back to a backup taken while an earlier run of this registrar was
    registered: the backup holds our key on that run's lease, which etcd revives (a restored
    lease gets its whole TTL again), and our current lease is unknown there. The registrar
    took that lease for another live registrar with our host name (a clone): an ERROR "two
    hosts share a host name", /ready 503, the key left to a lease nobody renews, and once that
    lapsed the instance was out of its pool until the next retry."""
    prefix = f"/r{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    write_registration(tmp_path / "conf", "web", "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {
            "service": "web", "port": 80, "id": "web-1", "address": "10.0.0.1",
            "ttl": f"{TTL}s", "drain": "0s"}.items()))
    c = client(etcd_private.endpoint)
    earlier, _ = _start(procs, tmp_path, etcd_private, prefix, "earlier")
    wait_for(lambda: published(c, key) is not None, timeout=15, what="the earlier run registered")
    earlier_lease = int(c.get(key)[1].lease_id)
    c.close()
    backup = tmp_path / "backup"
    _restart_etcd_from(etcd_private, None, backup)  # the backup: the earlier run's key in it
    earlier.signal(signal.SIGKILL)
    earlier.wait()
    c = client(etcd_private.endpoint)
    # Its lease revoked, as its TTL would run out (the restart gave it its whole TTL again):
    # the key goes with it now, not a TTL later. The backup keeps both.
    c.revoke_lease(earlier_lease)
    wait_for(lambda: published(c, key) is None, timeout=TTL + 10, what="the earlier run's key gone")
    proc, metrics = _start(procs, tmp_path, etcd_private, prefix, "now")
    wait_for(lambda: published(c, key) is not None, timeout=15, what="registered")
    lease = int(c.get(key)[1].lease_id)
    assert lease != earlier_lease
    c.close()

    _restart_etcd_from(etcd_private, backup, None)
    c = client(etcd_private.endpoint)
    # (the backup's key, on the earlier run's lease, unless the registrar took it over
    # already: its log says it found etcd's history gone back, asserted below)
    assert int(c.get(key)[1].lease_id) != lease, "our current lease: unknown to the backup"
    # The key goes to a lease of this run and stays there, never absent; /ready never says
    # that another registrar holds it (sampled past the restored lease's TTL).
    said: list[object] = []
    until = time.monotonic() + TTL + 2
    while time.monotonic() < until:
        raw, _ = c.get(key)
        assert raw is not None, proc.output()[-3000:]
        status, body = ready(metrics)
        if status != 200:
            said.append(body)
        time.sleep(0.05)
    assert int(c.get(key)[1].lease_id) not in (0, earlier_lease), proc.output()[-3000:]
    assert not [b for b in said if "share a host name" in json.dumps(b)], said
    out = proc.output()
    assert "another registrar" not in out, out[-3000:]
    assert "history went back" in out, out[-3000:]
    assert proc.proc.poll() is None
