"""A search of the process table that hangs does not stop `watch`.

A read of /proc/PID/cmdline blocks while that process's memory-map lock is held (a process
stuck faulting on a dead NFS or FUSE mount), and the search for a `process = "name"` signal
target read every process's on the watch loop's thread: every resource, the heartbeat, /health
and the watchdog ping stopped. The stuck read is injected into the real `confsync watch` by a
sitecustomize (a kernel-held lock cannot be made here without root and a FUSE server); real
etcd. The resource whose target is searched for fails its reload saying the process table did
not answer, with one search under way whatever the retries; another resource follows etcd;
/health stays 200; once the table answers, the retry goes through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

pytestmark = [pytest.mark.etcd]

NOBODY = "confsync-test-no-such-program"  # (no process has it: every argv is read)
TEMPLATE = "value={{ getv('/k/v') }}\n"
# Reads of a cmdline (confsync's, and psutil's, which searches read every process's with
# before) block while the file $STUCK exists (at most 60 s); each read that blocked adds a line
# to $STUCK_LOG.
STUCK_READ = """
import os, time
import confsync.processes as processes
from psutil import _pslinux

def stuck(read):
    def stuck_read(*args):
        if os.path.exists(os.environ["STUCK"]):
            with open(os.environ["STUCK_LOG"], "a") as log:
                log.write("read\\n")
            deadline = time.monotonic() + 60
            while os.path.exists(os.environ["STUCK"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return read(*args)
    return stuck_read

if hasattr(processes, "argv"):
    processes.argv = stuck(processes.argv)
_pslinux.Process.cmdline = stuck(_pslinux.Process.cmdline)
"""


def test_a_hung_process_search_fails_its_reload_and_holds_nothing_else(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    etcd_client = client(etcd.endpoint)
    etcd_client.put(prefix + "/k/v", "1")
    site, confdir = tmp_path / "site", tmp_path / "cd"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STUCK_READ)
    stuck, stuck_log = tmp_path / "stuck", tmp_path / "stuck.log"
    stuck.touch()
    svc, other = tmp_path / "svc.conf", tmp_path / "other.conf"
    write_resource(confdir, "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
    write_resource(confdir, "svc", TEMPLATE, f'dest = "{svc}"\nkeys = ["/k"]\n'
                   f'reload_signal = "SIGHUP"\nprocess = "{NOBODY}"\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                     prefix, "--wait-min", "0", "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log",
                     env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}", "STUCK": str(stuck),
                          "STUCK_LOG": str(stuck_log)})
    watchers.append(w)
    try:
        w.wait_log("resource svc: reload failed: the process table did not answer: searching "
                   f"/proc for the process named '{NOBODY}' has not returned after 3.0s",
                   timeout=30)
        wait_for(lambda: read(other) == "value=1\n", 10, what="the other resource")
        etcd_client.put(prefix + "/k/v", "2")
        wait_for(lambda: read(other) == "value=2\n", 10,
                 what=f"the other resource, while the search hangs\n{w.output()[-2000:]}")
        w.wait_log("an earlier search has not returned", timeout=30)  # (svc tried again)
        assert probe(base, "/health")[0] == 200
        status, body = probe(base, "/ready")
        assert status == 503 and "failing: svc" in body.get("reasons", []), body
        assert len(read(stuck_log).splitlines()) == 1  # one search, whatever the retries
    finally:
        stuck.unlink()  # the search returns, so that the daemon can stop
    w.wait_log(f"resource svc: no running process for {NOBODY}; file updated", timeout=60)
    assert read(svc) == "value=2\n"
    assert w.stop() == 0, w.output()[-2000:]
