"""A confsync killed between installing a file and reloading its service: the successor reloads.

Nothing a successor can ask says which file a `reload_cmd` service read, so it found the file
"up to date" and left the service on the old configuration until the next change in etcd. The
replaced file is now kept beside dest (`.<name>.confsync-running`) until the reload is done.

The kill window is made real: two resources take one change, and the second one's check blocks,
so the first one's file is installed and its reload (done after every file of the pass) not yet.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

pytestmark = pytest.mark.etcd

BLOCKING_CHECK = """#!/bin/sh
# blocks while the flag file exists (the test's kill window), else passes
if [ -e "$1/flag" ]; then echo $$ > "$1/check.pid"; sleep 30; fi
exit 0
"""


def _confdir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The `app` resource (its "service" copies the file it runs to `live`) and `zz`, whose
    check blocks while tmp_path/flag exists. Returns (confdir, app's dest, live)."""
    confdir, dest, live = tmp_path / "cd", tmp_path / "app.conf", tmp_path / "live"
    check = tmp_path / "check.sh"
    check.write_text(BLOCKING_CHECK)
    check.chmod(0o755)
    write_resource(confdir, "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\n'
                   f'reload_cmd = ["cp", "{dest}", "{live}"]')
    write_resource(confdir, "zz", "also {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path / "zz.conf"}"\nkeys = ["/app"]\n'
                   f'check_cmd = ["{check}", "{tmp_path}"]')
    return confdir, dest, live


def _watch(confdir: Path, etcd: EtcdMember, prefix: str, log: Path) -> WatchProcess:
    return WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                        prefix, "--wait-min", "0", log=log)


def test_a_reload_owed_when_watch_was_killed_is_done_by_the_next_watch(
        etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    confdir, dest, live = _confdir(tmp_path)
    kv = client(etcd.endpoint)
    kv.put(prefix + "/app/port", "1")
    first = _watch(confdir, etcd, prefix, tmp_path / "first.log")
    try:
        wait_for(lambda: read(live) == "port 1\n", timeout=15, what="the first reload")
        (tmp_path / "flag").touch()
        kv.put(prefix + "/app/port", "2")
        wait_for(lambda: (tmp_path / "check.pid").exists(), timeout=10, what="zz's check")
        assert read(dest) == "port 2\n" and read(live) == "port 1\n"  # installed, not live
        first.proc.kill()  # SIGKILL: as the OOM killer does it
        first.proc.wait(timeout=10)
    finally:
        first.stop()
        if (tmp_path / "check.pid").exists():
            os.killpg(int((tmp_path / "check.pid").read_text()), signal.SIGKILL)
    running = tmp_path / ".app.conf.confsync-running"
    assert running.read_text() == "port 1\n"  # what the service still runs
    (tmp_path / "flag").unlink()
    check = confsync("check", "--confdir", str(confdir), "--endpoints", etcd.endpoint,
                     "--prefix", prefix)
    assert check.returncode == 4, check.stdout + check.stderr  # pending: a reload
    assert "app.conf is up to date, but its reload is owed" in check.stdout
    assert running.exists() and read(live) == "port 1\n"  # `check` changes nothing

    second = _watch(confdir, etcd, prefix, tmp_path / "second.log")
    try:
        wait_for(lambda: read(live) == "port 2\n", timeout=15,
                 what=f"the owed reload; log:\n{second.output()}")
        wait_for(lambda: not running.exists(), timeout=5, what="the running copy dropped")
        assert "reload of" in second.output() and "still owed" in second.output()
        assert "Traceback" not in second.output()
    finally:
        second.stop()


def test_nothing_is_kept_once_reloads_are_done(etcd: EtcdMember, tmp_path: Path,
                                               prefix: str) -> None:
    """The running copy lives only from the rename to the reload: no file is left beside dest,
    and a plain restart reloads nothing."""
    confdir, _, live = _confdir(tmp_path)
    kv = client(etcd.endpoint)
    kv.put(prefix + "/app/port", "1")
    watch = _watch(confdir, etcd, prefix, tmp_path / "first.log")
    try:
        wait_for(lambda: read(live) == "port 1\n", timeout=15)
        kv.put(prefix + "/app/port", "2")
        wait_for(lambda: read(live) == "port 2\n", timeout=10)
    finally:
        watch.stop()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    live.unlink()
    again = _watch(confdir, etcd, prefix, tmp_path / "second.log")
    try:
        again.wait_log("watching /", timeout=15)  # (after the first pass and its reloads)
        assert again.output().count("up to date") == 2
        assert not live.exists()  # no reload: nothing was owed
    finally:
        again.stop()
