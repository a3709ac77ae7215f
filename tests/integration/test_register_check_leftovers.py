"""An exec check that leaves processes behind, run by the real `confsync register`."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import running, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


def test_what_an_exec_check_leaves_running_is_killed_at_its_exit(
        etcd: EtcdMember, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """A check that starts a helper in the background and exits (`sh -c "probe & ..."`) left
    the helper at every run, outliving the registrar: 10 a second at interval 100ms, until the
    unit's TasksMax refused every fork and every exec check failed. The check still passes."""
    prefix = f"/r{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    pids = tmp_path / "pids"
    write_registration(tmp_path / "conf", "web", (
        'service = "web"\nport = 80\nid = "web-1"\naddress = "10.0.0.1"\nttl = "3s"\n'
        'drain = "0s"\n'
        '[[check]]\ntype = "exec"\n'
        f'command = ["sh", "-c", "sleep 600 & echo $! >> {pids}; exit 0"]\n'
        'interval = "100ms"\nrise = 1\n'))
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--hostname", "node-a", log=tmp_path / "r.log")
    procs.append(proc)
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, timeout=15,
                 what=f"registered\n{proc.output()[-2000:]}")
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 20, timeout=30,
                 what="20 runs of the check")
        time.sleep(0.3)  # (the helper of a run under way may be alive for now)
        started = [int(p) for p in pids.read_text().split()]
        alive = [pid for pid in started if running(pid)]
        # At most the run under way's; before, every run's helper (20 and counting).
        assert len(alive) <= 1, f"{len(alive)} of {len(started)} helpers left running"
        assert published(c, key)["state"] == "ready"  # type: ignore[index]
    finally:
        c.close()
        for pid in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # (the old code's leftovers: ours to end)
