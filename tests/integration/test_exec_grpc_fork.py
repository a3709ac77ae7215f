"""`watch --exec` given GRPC_ENABLE_FORK_SUPPORT=1 (set image-wide for Python services that
fork with gRPC): the service is started by fork() when its open-file limit is restored (a soft
limit below the hard one, as systemd gives), and gRPC's fork handlers hung that fork before
its exec with the watch's threads alive: the loop stopped for good, SIGTERM unheeded, within
1-6 restarts of the child. confsync runs without gRPC's fork support; the child still gets the
variable as it was given. Real etcd, the real process under `prlimit`."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")]

RESTARTS = 8


def test_the_exec_service_restarts_and_the_watch_follows_with_grpc_fork_support_asked(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    dest, seen = tmp_path / "out", tmp_path / "child-env"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v', 'none') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    # A service that exits at once, restarted every ~0.4 s: a fork each time.
    service = f"sh -c 'echo \"$GRPC_ENABLE_FORK_SUPPORT\" > {seen}; sleep 0.2'"
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--exec", service,
                     log=tmp_path / "watch.log", wrapper=("prlimit", "--nofile=1024:4096"),
                     env={"GRPC_ENABLE_FORK_SUPPORT": "1",
                          "CONFSYNC_EXEC_RESTART_DELAY": "0.1s",
                          "CONFSYNC_EXEC_RESTART_DELAY_MAX": "0.1s",
                          "CONFSYNC_EXEC_CRASH_LIMIT": "1000"})
    watchers.append(w)
    wait_for(lambda: read(dest) == "none\n", 20, what="first render")
    c = client(etcd.endpoint)
    # Writes all along: gRPC's threads busy as the service forks.
    deadline = time.monotonic() + 60
    for i in itertools.count():
        c.put(prefix + "/app/v", str(i))
        wait_for(lambda i=i: read(dest) == f"{i}\n", 20,  # type: ignore[misc]
                 what=f"value {i}; log:\n{w.output()[-3000:]}")
        if w.output().count("exec: started") > RESTARTS:
            break
        assert time.monotonic() < deadline, f"too few restarts:\n{w.output()[-3000:]}"
    assert "open-file limit raised" in w.output()  # (so the service was started by fork)
    assert read(seen) == "1\n"
    # (143: the service, stopped by SIGTERM, and confsync exits with its status)
    assert w.stop(timeout=20) in (0, 143), w.output()[-3000:]
