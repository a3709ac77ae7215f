"""`confsync register` with its maintenance file under a mount that stops answering (a hung NFS
or FUSE server), with a real etcd and a real (never answering) FUSE mount."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.disk import hung_mount
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


def test_a_hung_mount_under_the_maintenance_file_holds_back_nothing_else(
        etcd: EtcdMember, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """The loop looked the file up itself, every tick: stuck in that stat, it took no check
    result, no signal and no heartbeat, while the etcd thread kept the lease, and so the
    "ready" key, alive. A service that then failed stayed in every pool for as long as the
    mount hung, and SIGTERM did nothing. Now the lookup hangs alone: the last known state
    is kept and said, checks and stops go on."""
    prefix = f"/r{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    healthy, share = tmp_path / "healthy", tmp_path / "share"
    healthy.touch()
    share.mkdir()
    write_registration(tmp_path / "conf", "web", "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {
            "service": "web", "port": 8080, "id": "web-1", "address": "10.0.0.7", "ttl": "2s",
            "drain": "500ms", "maintenance_file": str(share / "maint")}.items())
        + f'[[check]]\ntype = "exec"\ncommand = ["test", "-e", "{healthy}"]\n'
        'interval = "100ms"\nrise = 1\nfall = 1\n')
    metrics = free_port()
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{metrics}", log=tmp_path / "r.log")
    procs.append(proc)
    c = client(etcd.endpoint)
    state = lambda: (published(c, key) or {}).get("state")  # noqa: E731
    wait_for(lambda: state() == "ready", timeout=15, what="registered")
    base = f"http://127.0.0.1:{metrics}"
    with hung_mount(share):
        time.sleep(0.5)  # the loop's lookups (one every 0.1 s) meet the hung mount
        healthy.unlink()
        wait_for(lambda: state() is None, timeout=3, interval=0.05,
                 what="the failed service's key deleted while the lookup hangs")
        wait_for(lambda: "no answer" in str(probe(base, "/ready")[1].get("why", {})),
                 timeout=3, what=f"/ready's why names the hung lookup: {proc.output()[-800:]}")
        healthy.touch()
        wait_for(lambda: state() == "ready", timeout=3, interval=0.05, what="ready again")
        assert probe(base, "/health")[0] == 200
        proc.signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert proc.wait(timeout=5) == 0, proc.output()[-2000:]
        assert time.monotonic() - stopped < 3  # drain 0.5 s, then the revoke
        assert published(c, key) is None
    assert proc.output().count("maintenance file") >= 1
