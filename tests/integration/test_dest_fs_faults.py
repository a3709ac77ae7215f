"""Faults of the dest's own filesystem under `confsync watch` and `confsync once` (a full disk,
a read-only remount, an immutable file), with real filesystems (a 64 KiB tmpfs) and real etcd.
Each must leave dest byte for byte as it was with nothing staged beside it, keep /health and
/ready honest, and converge by itself once the fault is gone. Skipped without root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.disk import fill
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

TEMPLATE = "value={{ getv('/k/v') }}\n"


def _watch(watchers: list[WatchProcess], tmp_path: Path, etcd: EtcdMember,
           prefix: str, *extra: str) -> tuple[WatchProcess, str]:
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", *extra, log=tmp_path / "watch.log")
    watchers.append(w)
    return w, f"http://127.0.0.1:{port}"


def _ready(base: str) -> tuple[int, list[str]]:
    status, body = probe(base, "/ready")
    return status, body.get("reasons", [])


def _failing_honestly(base: str) -> bool:
    """/ready 503 naming the resource, /health 200: the daemon is fine, the file is not."""
    status, reasons = _ready(base)
    return status == 503 and "failing: app" in reasons and probe(base, "/health")[0] == 200


def test_full_disk_read_only_remount_and_immutable_dest_are_retried_until_they_pass(
        etcd: EtcdMember, tmp_path: Path, prefix: str, disk: Path,
        watchers: list[WatchProcess]) -> None:
    """Each fault fails the apply naming resource, step and reason, leaves dest as it was and
    nothing staged beside it, says so in /ready (not /health), and the retry installs the
    file once the fault is gone, with no change in etcd."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = disk / "out.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w, base = _watch(watchers, tmp_path, etcd, prefix, "--log-level",
                     "debug")  # (a retry failing as before is a DEBUG line)
    wait_for(lambda: read(dest) == "value=1\n" and _ready(base)[0] == 200, 20, what="first")
    filler = disk / "filler"
    faults = [
        (lambda: fill(filler), filler.unlink,
         f"resource app: stage failed: cannot write a staged file in {disk}: No space left"),
        (lambda: subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True),
         lambda: subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True),
         f"resource app: stage failed: cannot write a staged file in {disk}: Read-only"),
        (lambda: subprocess.run(["chattr", "+i", str(dest)], check=True),
         lambda: subprocess.run(["chattr", "-i", str(dest)], check=True),
         f"resource app: install failed: cannot rename into {dest}: Operation not permitted"),
    ]
    for n, (break_it, fix_it, error) in enumerate(faults, start=2):
        before = dest.read_bytes()
        break_it()
        c.put(prefix + "/k/v", str(n) * 3000)  # more than a full disk has left
        w.wait_log(error, timeout=20, count=2)  # the change, then a retry
        assert dest.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == sorted(
            {"out.conf", "filler"} & {p.name for p in disk.iterdir()})  # nothing staged
        wait_for(lambda: _failing_honestly(base), 5, what=f"/ready 503, /health 200: {error}")
        fix_it()
        wait_for(lambda: read(dest) == "value=" + str(n) * 3000 + "\n", 45,  # noqa: B023
                 what=f"a retry once fixed ({error})\n{w.output()[-2000:]}")
        wait_for(lambda: _ready(base)[0] == 200, 10, what="ready again")
    assert sorted(p.name for p in disk.iterdir()) == ["out.conf"]
    assert w.proc.poll() is None


def test_once_on_a_full_or_read_only_disk_fails_that_resource_alone(
        etcd: EtcdMember, tmp_path: Path, prefix: str, disk: Path) -> None:
    """`confsync once`: exit 1 with the resource, step and reason, dest as it was and nothing
    staged beside it; a resource on another filesystem is still written."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, other = disk / "out.conf", tmp_path / "other.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    write_resource(tmp_path / "cd", "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
    args = ("once", "--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
            "--prefix", prefix)
    assert confsync(*args).returncode == 0
    fill(disk / "filler")
    for n, why in ((2, "No space left on device"), (3, "Read-only file system")):
        if n == 3:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        c.put(prefix + "/k/v", str(n) * 3000)
        done = confsync(*args)
        assert done.returncode == 1, done.stderr
        assert (f"resource app: stage failed: cannot write a staged file in {disk}: {why}"
                in done.stderr), done.stderr
        assert read(dest) == "value=1\n" and read(other) == "value=" + str(n) * 3000 + "\n"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "out.conf"]
    # `check` tells the same in advance (it said "would change", exit 4, where `once` fails)
    checked = confsync("check", *args[1:])
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert (f"app: FAILED: resource app: stage failed: cannot write a staged file in {disk}: "
            "Read-only file system") in checked.stdout, checked.stdout


def test_check_names_the_read_only_disk_once_fails_at_not_a_failing_check(
        tmp_path: Path, disk: Path) -> None:
    """A dest on a read-only filesystem with a check that fails too: `once` stages before it
    checks and fails at "stage"; `check` ran the check first and said "check failed"."""
    data = tmp_path / "d.yaml"
    data.write_text("k:\n  v: 2\n")
    dest = disk / "out.conf"
    dest.write_text("value=1\n")
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\ncheck_cmd = "false {{{{src}}}}"')
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    args = ("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file", str(data))
    done, planned = confsync("once", *args), confsync("check", *args)
    said = f"resource app: stage failed: cannot write a staged file in {disk}: Read-only"
    assert done.returncode == planned.returncode == 1, (done.stderr, planned.stdout)
    assert said in done.stderr, done.stderr
    assert said in planned.stdout, planned.stdout
    assert read(dest) == "value=1\n"


def test_a_filesystem_gone_read_only_during_the_check_leaves_no_staged_file_behind(
        etcd: EtcdMember, tmp_path: Path, prefix: str, disk: Path,
        watchers: list[WatchProcess]) -> None:
    """Remounted read-only while check_cmd ran: the install fails, and so did the removal of
    the staged file. That second error replaced the first (`install failed: <staged file>:
    Read-only file system`), and the staged file stayed beside dest for the daemon's life
    (the start-up sweep takes only dead writers' files). Now the error is the install's own,
    and the staged file is removed by a later apply once the disk is writable."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, flag = disk / "out.conf", tmp_path / "go-read-only"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\ncheck_cmd = ["sh", "-c", '
                   f'"test ! -e {flag} || mount -o remount,ro {disk}"]')
    w, base = _watch(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(dest) == "value=1\n" and _ready(base)[0] == 200, 20, what="first")
    flag.touch()
    c.put(prefix + "/k/v", "2")
    w.wait_log("resource app: install failed", timeout=20)
    failed = next(line for line in w.output().splitlines() if "install failed" in line)
    assert failed.endswith("install failed: cannot set owner 0:0 and mode 0644: "
                           "Read-only file system"), failed  # not the staged file's removal
    assert read(dest) == "value=1\n"
    wait_for(lambda: _failing_honestly(base), 5, what="/ready 503, /health 200")
    flag.unlink()
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    wait_for(lambda: read(dest) == "value=2\n", 45, what=f"a retry\n{w.output()[-2000:]}")
    wait_for(lambda: sorted(p.name for p in disk.iterdir()) == ["out.conf"], 5,
             what=f"the staged file removed: {sorted(p.name for p in disk.iterdir())}")
    wait_for(lambda: _ready(base)[0] == 200, 10, what="ready again")


def test_a_mode_0000_set_by_hand_is_kept(etcd: EtcdMember, tmp_path: Path, prefix: str,
                                         watchers: list[WatchProcess]) -> None:
    """A resource without `mode` keeps the file's mode, `chmod 000` too: mode 0 was taken for
    no mode, so the heartbeat's drift check rewrote the file with 0644 (a WARNING "differed
    from its render ... rewritten"), and so did every later write."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w, base = _watch(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(dest) == "value=1\n" and _ready(base)[0] == 200, 20, what="first")
    os.chmod(dest, 0o000)
    w.wait_log("app: dest changed on disk", timeout=10)
    c.put(prefix + "/k/v", "2")
    wait_for(lambda: read(dest) == "value=2\n", 20, what="the change")
    assert os.stat(dest).st_mode & 0o7777 == 0o000
    assert "differed from its render" not in w.output()
    assert _ready(base)[0] == 200


def test_a_stale_staged_file_on_a_read_only_filesystem_at_start_is_removed_once_writable(
        etcd: EtcdMember, tmp_path: Path, prefix: str, disk: Path,
        watchers: list[WatchProcess]) -> None:
    """A killed run's staged file, found by the start-up sweep while the filesystem is
    read-only, could not be removed, and was never looked for again: it stayed beside dest
    for the daemon's life (dest was up to date, so no apply came by). Now the heartbeat
    removes it once the filesystem is writable again."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = disk / "out.conf"
    dest.write_text("value=1\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = disk / f".out.conf.{dead.pid}.0.confsync"
    stale.write_text("value=half a fil")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w, base = _watch(watchers, tmp_path, etcd, prefix)
    w.wait_log(f"cannot remove stale staged file {stale}", timeout=20)
    assert "Read-only file system" in w.output()
    wait_for(lambda: _ready(base)[0] == 200, 10, what="ready: dest is up to date")
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    wait_for(lambda: not stale.exists(), 5, what=f"the stale file removed\n{w.output()}")
    assert read(dest) == "value=1\n"
