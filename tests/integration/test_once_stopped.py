"""`once` and `check` stopped (SIGTERM, SIGINT) while a check or reload command runs take the
command, and what it started, with them (confsync/stop_along.py).

The commands run in a session of their own, and a one-shot command keeps the signals' default
action: a `docker stop` of a `once` in a 30 s check_cmd ended confsync alone, the check ran on
orphaned, and its staged file stayed beside dest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.processes import state
from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.pidns import AS_INIT, pid_namespaces_work

pytestmark = pytest.mark.etcd

# Writes its pid and its background child's, then waits: a check (or reload) that takes long.
SLOW = """#!/bin/sh
sleep 600 &
echo $! > "$1.kid"
echo $$ > "$1.tmp" && mv "$1.tmp" "$1"
wait
"""


def _gone(pid: int) -> bool:
    return state(pid) in (None, "Z")  # (a zombie: killed, its new parent yet to reap it)


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups of commands a failing test (the old code) left running: killed after."""
    found: list[int] = []
    yield found
    for pgid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _start(command: str, confdir: Path, etcd: EtcdMember, prefix: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "confsync", command, "--confdir",
                             str(confdir), "--endpoints", etcd.endpoint, "--prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=REPO)


def _slow_resource(etcd: EtcdMember, tmp_path: Path, prefix: str, dest: Path,
                   step: str) -> tuple[Path, Path]:
    """conf.d/app.toml whose `<step>_cmd` (check or reload) is SLOW, and etcd data that
    renders other than "port 80\n"; (the script, the file it writes its pid to)."""
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    script, pidfile = tmp_path / "slow.sh", tmp_path / "command.pid"
    script.write_text(SLOW)
    script.chmod(0o755)
    write_resource(tmp_path / "cd", "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\n{step}_cmd = "{script} {pidfile}"\n'
                   f'{step}_timeout = "10m"')
    return script, pidfile


def _stop_while_running(proc: subprocess.Popen[str], pidfile: Path, signum: int,
                        groups: list[int]) -> tuple[int, int, str]:
    """Wait until the command runs, send `signum` to confsync; (command pid, its child's pid,
    confsync's stderr) once confsync ended."""
    wait_for(lambda: pidfile.exists() or proc.poll() is not None, 60, what="the command")
    assert proc.poll() is None, proc.communicate()
    command, kid = int(pidfile.read_text()), int(Path(f"{pidfile}.kid").read_text())
    groups.append(os.getpgid(command))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return command, kid, err


def _staged(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".confsync")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_once_stopped_in_its_check_takes_the_check_along(
        etcd: EtcdMember, tmp_path: Path, prefix: str, signum: signal.Signals,
        groups: list[int]) -> None:
    dests = tmp_path / "etc"
    dests.mkdir()
    dest = dests / "app.conf"
    dest.write_text("port 80\n")
    script, pidfile = _slow_resource(etcd, tmp_path, prefix, dest, "check")
    proc = _start("once", tmp_path / "cd", etcd, prefix)
    command, kid, err = _stop_while_running(proc, pidfile, signum, groups)
    assert proc.returncode == -signum, err  # ended by the signal: a shell's 128+signal
    wait_for(lambda: _gone(command) and _gone(kid), 30, what="the check and its child gone")
    assert dest.read_text() == "port 80\n"
    assert _staged(dests) == []
    assert f"{signum.name} while `{script}" in err and "Traceback" not in err, err


def test_check_stopped_in_its_check_takes_the_check_along(
        etcd: EtcdMember, tmp_path: Path, prefix: str, groups: list[int]) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    dest = tmp_path / "app.conf"
    _, pidfile = _slow_resource(etcd, tmp_path, prefix, dest, "check")
    proc = _start("check", tmp_path / "cd", etcd, prefix, env={"TMPDIR": str(temp)})
    command, kid, err = _stop_while_running(proc, pidfile, signal.SIGTERM, groups)
    assert proc.returncode == -signal.SIGTERM, err
    wait_for(lambda: _gone(command) and _gone(kid), 30, what="the check and its child gone")
    # Its copy to check removed (the render memo and Jinja2's cache live there too).
    assert not dest.exists() and list(temp.glob("confsync-check-*")) == []


def test_once_stopped_in_its_reload_takes_the_reload_along_and_owes_it(
        etcd: EtcdMember, tmp_path: Path, prefix: str, groups: list[int]) -> None:
    dest = tmp_path / "app.conf"
    dest.write_text("port 80\n")
    _, pidfile = _slow_resource(etcd, tmp_path, prefix, dest, "reload")
    proc = _start("once", tmp_path / "cd", etcd, prefix)
    command, kid, err = _stop_while_running(proc, pidfile, signal.SIGTERM, groups)
    assert proc.returncode == -signal.SIGTERM, err
    wait_for(lambda: _gone(command) and _gone(kid), 30, what="the reload and its child gone")
    assert read(dest) == "port 8080\n" and _staged(tmp_path) == []
    # The file is in place, its reload not done: said so, and left for the next run.
    owed = confsync("check", "--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                    "--prefix", prefix)
    assert owed.returncode == 4 and "its reload is owed" in owed.stdout, owed.stdout + owed.stderr


@pytest.mark.skipif(not pid_namespaces_work(),
                    reason="cannot create a PID namespace here (unshare --pid needs root)")
def test_once_as_pid1_stopped_in_its_check_exits_143(etcd: EtcdMember, tmp_path: Path,
                                                     prefix: str) -> None:
    """As PID 1 of a container without an init the kernel ignores a signal with no handler:
    a `docker stop` of a `once` in its check waited for the check (or the SIGKILL). Caught
    while the check runs, it stops; a signal sent to itself is ignored there as well, so it
    exits 128+15. (The namespace's end takes every process in it: nothing to look for.)"""
    import psutil

    dest = tmp_path / "app.conf"
    dest.write_text("port 80\n")
    _, pidfile = _slow_resource(etcd, tmp_path, prefix, dest, "check")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    proc = subprocess.Popen([*AS_INIT, sys.executable, "-m", "confsync", "once", "--confdir",
                             str(tmp_path / "cd"), "--endpoints", etcd.endpoint, "--prefix",
                             prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    init: psutil.Process | None = None
    try:
        wait_for(lambda: pidfile.exists() or proc.poll() is not None, 60, what="the check")
        (init,) = psutil.Process(proc.pid).children()
        init.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # (PID 1 ignoring SIGTERM outlives unshare's --kill-child)
            if init is not None:
                init.kill()
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert dest.read_text() == "port 80\n" and _staged(tmp_path) == [], err


def test_once_interrupted_outside_a_command_ends_by_sigint(tmp_path: Path, prefix: str) -> None:
    """Ctrl-C while `once` (or `check`) waits for etcd (no command running) ended it with
    exit 1, "a resource failed", and no line; a shell loop around it went on to its next run.
    It ends by SIGINT now, as in a command (the README's 130). (It still lets the read in
    flight end first, within etcd.timeout: the store is never closed under a read.)"""
    import socket
    import threading

    write_resource(tmp_path / "cd", "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path / "app.conf"}"\nkeys = ["/app"]\n')
    mute = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    accepted: list[socket.socket] = []
    waiter = threading.Thread(target=lambda: accepted.append(mute.accept()[0]), daemon=True)
    waiter.start()
    try:
        port = mute.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "confsync", "once", "--confdir", str(tmp_path / "cd"),
             "--endpoints", f"http://127.0.0.1:{port}", "--prefix", prefix],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")},
                 "CONFSYNC_ETCD_TIMEOUT": "3s"})
        wait_for(lambda: accepted or proc.poll() is not None, 60, what="confsync asking etcd")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGINT, err
    finally:
        mute.close()
        for conn in accepted:
            conn.close()
