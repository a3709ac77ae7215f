"""The confdir lock follows the directory the confdir's path names now (confsync/confdir_lock.py):
a confdir deleted and made again, or a `current` symlink a deploy moves, left a running
`watch` locking the old inode, and a second `watch` (or a `once`) on the new one ran beside it.
A confdir that cannot be locked is said to be. Real processes, a real etcd."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember


def _make_confdir(confdir: Path, dest: Path, prefix: str) -> None:
    write_resource(confdir, "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\nprefix = "{prefix}"\n')


@pytest.mark.parametrize("how", ["recreated", "symlink moved", "watched, gone a while"])
def test_a_confdir_made_anew_under_a_running_watch_stays_locked_by_it(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess],
        how: str) -> None:
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    dest = tmp_path / "app.conf"
    args: tuple[str, ...] = ()
    if how != "symlink moved":
        confdir = tmp_path / "cd"
        _make_confdir(confdir, dest, prefix)
        if how.startswith("watched"):  # its edits reload it, and one reload finds it gone
            config = tmp_path / "confsync.toml"
            config.write_text("[watch]\nconfdir = true\n")
            args = ("--config", str(config))
    else:  # a deploy's releases/1, releases/2 and a `current` link swapped by rename
        confdir = tmp_path / "current"
        _make_confdir(tmp_path / "r1", dest, prefix)
        confdir.symlink_to(tmp_path / "r1")
    first = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                         "--wait-min", "0", *args, log=tmp_path / "first.log")
    watchers.append(first)
    wait_for(lambda: read(dest) == "port 8080\n", what="the first watch's render")
    if how == "recreated":
        os.rename(confdir, tmp_path / "cd.old")
        shutil.copytree(tmp_path / "cd.old", confdir)
        shutil.rmtree(tmp_path / "cd.old")
    elif how.startswith("watched"):
        shutil.copytree(confdir, tmp_path / "cd.new")
        shutil.rmtree(confdir)
        first.wait_log("configuration reload refused")
        os.rename(tmp_path / "cd.new", confdir)
    else:
        _make_confdir(tmp_path / "r2", dest, prefix)
        (tmp_path / "next").symlink_to(tmp_path / "r2")
        os.replace(tmp_path / "next", confdir)
    # A `once` on the new directory is refused beside the running watch (within a few beats).
    deadline, code = time.monotonic() + 6, None
    while time.monotonic() < deadline:
        code = confsync("once", "--confdir", str(confdir), "--endpoints", etcd.endpoint,
                        timeout=15).returncode
        if code == 2:
            break
        time.sleep(0.2)
    assert code == 2, f"`once` ran beside the watch (exit {code}):\n{first.output()[-2000:]}"
    second = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                          "--wait-min", "0", log=tmp_path / "second.log")
    watchers.append(second)
    try:
        code = second.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 2, f"a second watch runs beside the first:\n{second.output()[-2000:]}"
    assert f"pid {first.proc.pid}: " in second.output(), second.output()
    c.put(f"{prefix}/app/port", "8081")
    wait_for(lambda: read(dest) == "port 8081\n", what="the first watch goes on")
    assert first.proc.poll() is None


def test_a_watch_that_cannot_lock_its_confdir_says_so(tmp_path: Path,
                                                       watchers: list[WatchProcess]) -> None:
    """A confdir its user may enter but not read (mode 0711, root's) cannot be opened to lock
    (nor can one on NFS, where flock's exclusive lock needs a file open for writing): the
    watch ran unlocked without a word, and so did a second one."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as nobody")
    base = Path(tempfile.mkdtemp(prefix="confsync-lock-", dir="/tmp"))
    try:
        base.chmod(0o755)
        confdir, out = base / "cd", base / "out"
        _make_confdir(confdir, out / "app.conf", "")
        (confdir / "conf.d" / "app.toml").write_text(
            (confdir / "conf.d" / "app.toml").read_text().replace('prefix = ""\n', ""))
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        (base / "data.yaml").write_text("app:\n  port: '8080'\n")
        for path in base.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        confdir.chmod(0o711)
        w = WatchProcess("--confdir", str(confdir), "--backend", "file", "--file",
                         str(base / "data.yaml"), log=tmp_path / "watch.log",
                         env={"CONFSYNC_CONFIG": "/dev/null"},
                         wrapper=[setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        watchers.append(w)
        wait_for(lambda: read(out / "app.conf") == "port 8080\n",
                 what=f"the render; log:\n{w.output()[-2000:]}")
        assert f"confdir {confdir} cannot be locked (Permission denied" in w.output(), \
            w.output()
    finally:
        shutil.rmtree(base, ignore_errors=True)
