"""`register --exec`: a forward signal (SIGUSR1/SIGUSR2 by default) that reaches confsync as
its child starts is relayed to the child, never fatal to confsync.

The relay handlers were installed at the end of the start, after the child, its check threads,
the maintenance lookups and the etcd thread were started: a SIGUSR2 in between (an operator's
`kill -USR2`, a deploy tool's reload right after the start, the child itself signalling its
parent) took SIGUSR2's default action on confsync: it died, its child ran on orphaned and its
key stayed until the lease's TTL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import read, wait_for
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd]


def test_a_forward_signal_as_the_child_starts_is_relayed(etcd: EtcdMember,
                                                        tmp_path: Path) -> None:
    port = free_port()
    for i in range(20):  # (each with a check thread: the start takes a few ms, as on a busy host)
        write_registration(tmp_path / "conf", f"web{i}",
                           f'service = "web"\nport = {port}\nid = "web-{i}"\nttl = "10s"\n'
                           'address = "127.0.0.1"\ndrain = "0s"\n'
                           '[[check]]\ntype = "tcp"\ninterval = "1s"\n')
    got, pid_file = tmp_path / "child.got", tmp_path / "child.pid"
    # The child signals its parent, confsync, the moment it runs (about 1 ms after the fork).
    child = (f"sh -c 'echo $$ > {pid_file}; trap \"echo usr2 >> {got}\" USR2; "
             "kill -USR2 $PPID; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done'")
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix",
                           f"/rx{uuid.uuid4().hex[:10]}", "--exec", child,
                           log=tmp_path / "register.log")
    try:
        wait_for(lambda: read(got).strip() == "usr2" or proc.proc.poll() is not None,
                 timeout=10, what="the relayed SIGUSR2")
        time.sleep(0.2)
        assert proc.proc.poll() is None, f"confsync died: {proc.proc.returncode}"
        assert read(got).strip() == "usr2"
    finally:
        proc.stop()
        with contextlib.suppress(ValueError, OSError):  # an orphaned child (the old code)
            os.kill(int(read(pid_file).strip()), signal.SIGKILL)
