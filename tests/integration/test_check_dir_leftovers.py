"""A `check` killed while its `check_cmd` runs leaves its temporary directory, with the rendered
file (secrets included) in it: the next `check` removes it, and only what is provably its."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import wait_for
from tests.support.pidns import AS_INIT, pid_namespaces_work


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_killed_checks_directory_is_removed_by_the_next_check(tmp_path: Path) -> None:
    tmpdir, started, fast = tmp_path / "tmp", tmp_path / "started", tmp_path / "fast"
    tmpdir.mkdir()
    script = tmp_path / "slowcheck"
    script.write_text(f"#!/bin/sh\n[ -e {fast} ] && exit 0\necho $$ > {started}.new\n"
                      f"mv {started}.new {started}\nexec sleep 120\n")
    script.chmod(0o755)
    data = tmp_path / "d.yaml"
    data.write_text("a: s3cret\n")
    write_resource(tmp_path / "cd", "r", "password {{ getv('/a') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/a"]\ncheck_cmd = "{script} {{{{src}}}}"')
    argv = [sys.executable, "-m", "confsync", "check", "--confdir", str(tmp_path / "cd"),
            "--backend", "file", "--file", str(data)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    env["TMPDIR"] = str(tmpdir)
    killed = subprocess.Popen(argv, env=env, cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: started.exists() or killed.poll() is not None, timeout=60,
                 what="the check_cmd running")
        assert killed.poll() is None
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        if started.exists():  # (its own process group: confsync's kill did not reach it)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.read_text()), signal.SIGKILL)
    (left,) = tmpdir.glob("confsync-check-*")
    assert [f.read_text() for f in left.iterdir()] == ["password s3cret\n"]
    hour_ago = time.time() - 3700  # (younger, a dead pid may be another pid namespace's)
    os.utime(left, (hour_ago, hour_ago))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    dead = _dead_pid()
    kept = [tmpdir / f"confsync-check-{os.getpid()}-abcdefgh",  # a live check's
            tmpdir / "confsync-check-zyxwvuts"]  # an older confsync's, running (unnamed: by age)
    for path in kept:
        path.mkdir()
    young = tmpdir / f"confsync-check-{dead}-youngxxx"  # a dead pid, or another namespace's
    young.mkdir()
    kept.append(young)
    (tmpdir / f"confsync-check-{dead}-linkedxx").symlink_to(elsewhere)  # planted
    kept.append(tmpdir / f"confsync-check-{dead}-linkedxx")
    if os.geteuid() == 0:
        kept.append(tmpdir / f"confsync-check-{dead}-otheruse")  # another user's
        kept[-1].mkdir()
        os.chown(kept[-1], 65534, 65534)
    gone = tmpdir / "confsync-check-0ld_0ne_"
    gone.mkdir()
    (gone / ".out.1.0.confsync").write_text("password old\n")
    then = time.time() - 2 * 86400
    os.utime(gone, (then, then))

    fast.touch()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr  # (dest missing: it would change)
    assert not left.exists() and not gone.exists()
    assert all(path.exists() or path.is_symlink() for path in kept)
    assert (elsewhere / "keep").exists()
    assert sorted(tmpdir.glob("confsync-check-*")) == sorted(kept)


@pytest.mark.skipif(not pid_namespaces_work(),
                    reason="cannot create a PID namespace here (unshare --pid needs root)")
def test_a_killed_pid1_checks_directory_is_removed_by_the_next_pid1_check(tmp_path: Path) -> None:
    """`docker run` makes every `check` PID 1: the directory of one killed in a container that
    is started again (its /tmp kept) carries the next one's own pid, and was kept for good."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    data = tmp_path / "d.yaml"
    data.write_text("a: s3cret\n")
    write_resource(tmp_path / "cd", "r", "password {{ getv('/a') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/a"]')
    left = tmpdir / "confsync-check-1-abcdefgh"  # a PID 1 check's, SIGKILLed two hours ago
    left.mkdir()
    (left / ".out.1.0.confsync").write_text("password old\n")
    then = time.time() - 7200
    os.utime(left, (then, then))
    done = confsync("check", "--confdir", str(tmp_path / "cd"), "--backend", "file",
                    "--file", str(data), env={"TMPDIR": str(tmpdir)}, wrapper=AS_INIT)
    assert done.returncode == 4, done.stderr  # (dest missing: it would change)
    assert not left.exists(), done.stderr
    assert list(tmpdir.glob("confsync-check-*")) == []


@pytest.mark.skipif(not pid_namespaces_work(),
                    reason="cannot create a PID namespace here (unshare --pid needs root)")
def test_a_check_in_another_pid_namespace_leaves_a_live_writers_staged_file(
        tmp_path: Path) -> None:
    """A `check` in another container of the pod (one dest volume, pids apart) took the staged
    file a running `once` or `watch` was checking for a dead pid's and removed it: that one's
    rename then failed, and the new file was not installed."""
    hold, started, go = tmp_path / "hold", tmp_path / "started", tmp_path / "go"
    script = tmp_path / "heldcheck"  # the first run (once's) waits for `go`, 60 s at most
    script.write_text(f"#!/bin/sh\n[ -e {hold} ] || exit 0\nrm {hold}\ntouch {started}\n"
                      f"for i in $(seq 1200); do [ -e {go} ] && exit 0; sleep 0.05; done\n"
                      "exit 1\n")
    script.chmod(0o755)
    data = tmp_path / "d.yaml"
    data.write_text("a: 1\n")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "r", "a {{ getv('/a') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a"]\ncheck_cmd = "{script} {{{{src}}}}"')
    args = ("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file", str(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    hold.touch()
    once = subprocess.Popen([sys.executable, "-m", "confsync", "once", *args], env=env,
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: started.exists() or once.poll() is not None, timeout=60,
                 what="once's check_cmd running")
        (staged,) = tmp_path.glob(".out.*.confsync")
        checked = confsync("check", *args, wrapper=AS_INIT)
        assert checked.returncode == 4, checked.stderr  # (dest missing: it would change)
        assert staged.exists(), checked.stderr
    finally:
        go.touch()
        try:
            _, err = once.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(once.pid, signal.SIGKILL)
    assert once.returncode == 0, err
    assert dest.read_text() == "a 1\n"
