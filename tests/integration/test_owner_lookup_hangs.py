"""An owner name whose lookup hangs (LDAP or sssd down) does not stop `watch`.

getpwnam() ran on the watch loop's thread: a lookup that never returned stopped every other
resource, the heartbeat (/health 503 after its allowance, systemd's watchdog ping) and stops.
The hang here is real: the daemon runs in a mount namespace of its own, where a FIFO is bound
over /etc/passwd (NSS's `files` then blocks in its open, as it blocks on a dead LDAP server);
real etcd. Lookups are bounded (confsync/owners.py): the resource naming the user fails at step
`owner`, its dest left alone, with one lookup thread whatever the retries, and is written once
the lookup answers (at once, not at its backoff).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

OWN_MOUNTS = ("unshare", "--mount", "--propagation", "private")
TEMPLATE = "value={{ getv('/k/v') }}\n"


def _can_own_mounts() -> bool:
    return os.geteuid() == 0 and subprocess.run([*OWN_MOUNTS, "true"],
                                                capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _can_own_mounts(),
                                reason="needs root and unshare --mount (a private /etc/passwd)")


def _in_its_mounts(pid: int, *command: str, check: bool = True) -> None:
    subprocess.run(["nsenter", "--target", str(pid), "--mount", *command], check=check,
                   capture_output=True)


def _lookup_threads(pid: int) -> int:
    """The daemon's threads blocked opening the FIFO (Python 3.11 names no thread for the
    kernel: the lookups are told by where they wait)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # (a thread that ended meanwhile)
            count += (task / "wchan").read_text() == "wait_for_partner"
    return count


def _answer(fifo: Path) -> None:
    """Give the lookup waiting in its open of the FIFO the real /etc/passwd."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # (its reader waits: opens at once)
    except OSError as exc:  # ENXIO: no reader waits
        raise AssertionError(f"no lookup waits on {fifo}") from exc
    with contextlib.suppress(BrokenPipeError), open(fd, "wb") as lookup:
        lookup.write(Path("/etc/passwd").read_bytes())  # (it stops reading at its line)


def test_a_hung_user_lookup_fails_its_resource_and_holds_nothing_else(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    etcd_client = client(etcd.endpoint)
    etcd_client.put(prefix + "/k/v", "1")
    confdir, app, other = tmp_path / "cd", tmp_path / "app.conf", tmp_path / "other.conf"
    write_resource(confdir, "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                     prefix, "--wait-min", "0", "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log", wrapper=OWN_MOUNTS)
    watchers.append(w)
    wait_for(lambda: read(other) == "value=1\n" and probe(base, "/health")[0] == 200, 20,
             what="first render, healthy")
    fifo = tmp_path / "passwd"
    os.mkfifo(fifo)
    _in_its_mounts(w.proc.pid, "mount", "--bind", str(fifo), "/etc/passwd")
    hung = True
    try:
        write_resource(confdir, "app", TEMPLATE,
                       f'dest = "{app}"\nkeys = ["/k"]\nowner = "daemon"\n')
        w.signal(signal.SIGHUP)
        w.wait_log("resource app: owner failed: looking up user 'daemon' has not returned "
                   "after 5.0s", timeout=30)
        etcd_client.put(prefix + "/k/v", "2")
        wait_for(lambda: read(other) == "value=2\n", 10,
                 what=f"the other resource, while the lookup hangs\n{w.output()[-2000:]}")
        for sighup in range(1, 3):  # each reload forgets ids and applies app again
            w.signal(signal.SIGHUP)
            w.wait_log("configuration reloaded: 2 resources", count=1 + sighup, timeout=30)
        assert probe(base, "/health")[0] == 200
        status, body = probe(base, "/ready")
        assert status == 503 and "failing: app" in body.get("reasons", []), body
        assert not app.exists() and _lookup_threads(w.proc.pid) == 1
        # (Not mounted any more when /etc/passwd was replaced meanwhile, as useradd does: a
        # rename over a mount point detaches it in every namespace. The lookup under way
        # still waits in its open of the FIFO.)
        _in_its_mounts(w.proc.pid, "umount", "--lazy", "/etc/passwd", check=False)
        _answer(fifo)
        hung = False
        w.wait_log("user 'daemon': its lookup returned; applying again app")
        wait_for(lambda: read(app) == "value=2\n", 10,  # (its backoff: 45 s and more)
                 what=f"the retry once the lookup answered\n{w.output()[-2000:]}")
        assert app.stat().st_uid == 1  # daemon's
        wait_for(lambda: probe(base, "/ready")[0] == 200, 10, what="ready")
        assert _lookup_threads(w.proc.pid) == 0
    finally:
        if hung:  # let the lookup return, so that the daemon can stop
            with contextlib.suppress(AssertionError):
                _answer(fifo)
    assert w.stop() == 0, w.output()[-2000:]
