"""`watch --exec`: what the child's descendants start out of its process group (setsid) goes
with the child, at its death and at confsync's stop; a check command's background child does
not (it is not the child's), and is reaped once it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import WatchProcess, read, running, wait_for
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.register import RegisterProcess, write_registration

# Holds the port, as the service's own daemonized worker would; ignores SIGTERM (SIGKILL after
# stop_timeout); bounded: 60 s at most.
SERVER = textwrap.dedent("""
    import os, signal, socket, sys, time
    port, log = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        open(log, "a").write(f"busy {os.getpid()}\\n")
        sys.exit(1)
    open(log, "a").write(f"bound {os.getpid()} {os.getsid(0)}\\n")
    time.sleep(60)
""")

# The service: a wrapper that starts the port holder out of its group, then crashes on demand.
WRAPPERS = {
    "setsid": 'setsid {python} "$1/server.py" "$2" "$1/server.log" &',
    # a double fork: orphaned at once, while the wrapper still runs
    "double-fork": '( setsid {python} "$1/server.py" "$2" "$1/server.log" & )',
}
WRAPPER = """#!/bin/sh
{start}
while [ ! -e "$1/crash" ]; do sleep 0.05; done
rm -f "$1/crash"
exit 3
"""


def _zombies(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()
                if c.status() == psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def _confdir(tmp_path: Path, check: str | None = None) -> Path:
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "a.tmpl").write_text("a {{ getv('/a') }}\n")
    toml = f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path / "a.conf"}"\nkeys = ["/a"]\n'
    if check is not None:
        toml += f"check_cmd = {check}\n"
    (confdir / "conf.d" / "a.toml").write_text(toml)
    (tmp_path / "data.yaml").write_text("a: 1\n")
    return confdir


def _watch(tmp_path: Path, confdir: Path, wrapper: str, port: int) -> WatchProcess:
    (tmp_path / "server.py").write_text(SERVER)
    script = tmp_path / "svc.sh"
    script.write_text(WRAPPER.format(start=WRAPPERS[wrapper].format(python=sys.executable)))
    script.chmod(0o755)
    return WatchProcess("--confdir", str(confdir), "--backend", "file",
                        "--file", str(tmp_path / "data.yaml"),
                        "--exec", f"{script} {tmp_path} {port}", log=tmp_path / "watch.log",
                        env={"CONFSYNC_EXEC_STOP_TIMEOUT": "1s",
                             "CONFSYNC_EXEC_RESTART_DELAY": "100ms"})


def _servers(log: Path) -> list[str]:
    return read(log).splitlines()


@contextlib.contextmanager
def _stopped(proc: WatchProcess | RegisterProcess) -> Iterator[list[int]]:
    """confsync stopped, and the pids the test collects killed (left by the old code)."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        proc.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_setsid_descendant_goes_with_the_child_at_its_death_and_at_stop(
        tmp_path: Path, wrapper: str) -> None:
    """It lived on, orphaned, holding the port: every restart failed to bind (a crash loop that
    ended confsync), and it outlived confsync's stop."""
    log, port = tmp_path / "server.log", free_port()
    w = _watch(tmp_path, _confdir(tmp_path), wrapper, port)
    with _stopped(w) as pids:
        wait_for(lambda: len(_servers(log)) == 1, timeout=15, what="the first server")
        first = _servers(log)[0].split()
        assert first[0] == "bound" and first[1] == first[2], "a session of its own"
        pids.append(int(first[1]))
        (tmp_path / "crash").touch()
        wait_for(lambda: len(_servers(log)) >= 2, timeout=15,
                 what=f"the restart's server; log:\n{w.output()[-2000:]}")
        second = _servers(log)[1].split()
        assert second[0] == "bound", f"the restart could not bind: {_servers(log)}"
        pids.append(int(second[1]))
        assert not running(pids[0])
        assert "1 that left it" in w.output()
        wait_for(lambda: not _zombies(w.proc.pid), timeout=5, what="the stray reaped")
        assert running(pids[1])
        assert w.stop() == 128 + signal.SIGTERM  # the wrapper's own status
        wait_for(lambda: not running(pids[1]), timeout=5, what="the stray gone at stop")


def test_a_setsid_descendant_goes_with_confsync_at_stop(tmp_path: Path) -> None:
    """It outlived confsync (orphaned to init), holding the port for good where no container
    or cgroup cleans up."""
    log, port = tmp_path / "server.log", free_port()
    w = _watch(tmp_path, _confdir(tmp_path), "double-fork", port)
    with _stopped(w) as pids:
        wait_for(lambda: len(_servers(log)) == 1, timeout=15, what="the server")
        pids.append(int(_servers(log)[0].split()[1]))
        w.stop()
        wait_for(lambda: not running(pids[0]), timeout=5, what="the stray gone at stop")


def test_a_check_commands_background_child_is_left_running_and_reaped(tmp_path: Path) -> None:
    """Not the exec child's (no mark in its environment): never stopped with it. confsync, a
    subreaper while it runs a child, inherits it once its check has exited, and reaps it when
    it ends."""
    bg, starter = tmp_path / "bg.pid", tmp_path / "start_bg.py"
    # In a session of its own before the check exits (Popen returns after the exec): what is
    # left in the check's group goes at its exit (applier.run_check).
    starter.write_text("import subprocess, sys\n"
                       "p = subprocess.Popen(['sleep', '30'], start_new_session=True,\n"
                       "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                       "open(sys.argv[1], 'w').write(str(p.pid))\n")
    check = f'["{sys.executable}", "{starter}", "{bg}"]'
    log, port = tmp_path / "server.log", free_port()
    w = _watch(tmp_path, _confdir(tmp_path, check), "setsid", port)
    with _stopped(w) as pids:
        wait_for(lambda: read(bg).strip() and len(_servers(log)) == 1, timeout=15,
                 what="the check's background child and the server")
        pids += [int(read(bg)), int(_servers(log)[0].split()[1])]
        background = psutil.Process(pids[0])
        assert background.ppid() == w.proc.pid, "adopted by confsync, the subreaper"
        (tmp_path / "crash").touch()
        wait_for(lambda: len(_servers(log)) >= 2, timeout=15, what="the restart's server")
        assert not running(pids[1]) and running(pids[0]), "the check's child is not the child's"
        background.kill()
        wait_for(lambda: not psutil.pid_exists(pids[0]), timeout=5,
                 what="the check's background child reaped")
        assert not _zombies(w.proc.pid)


@pytest.mark.etcd
def test_register_exec_child_death_takes_its_setsid_descendant_along(
        etcd: EtcdMember, tmp_path: Path) -> None:
    """`register --exec` (no restarts: it exits when the child dies) shares the supervisor: the
    port holder the dead child left out of its group outlived confsync."""
    log, port = tmp_path / "server.log", free_port()
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {port}\nid = "web-0"\nttl = "10s"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n')
    (tmp_path / "server.py").write_text(SERVER)
    script = tmp_path / "svc.sh"
    script.write_text(WRAPPER.format(start=WRAPPERS["setsid"].format(python=sys.executable)))
    script.chmod(0o755)
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix",
                           f"/rx{uuid.uuid4().hex[:10]}", "--exec", f"{script} {tmp_path} {port}",
                           log=tmp_path / "register.log",
                           env={"CONFSYNC_EXEC_STOP_TIMEOUT": "1s"})
    with _stopped(proc) as pids:
        wait_for(lambda: len(_servers(log)) == 1, timeout=15, what="the server")
        pids.append(int(_servers(log)[0].split()[1]))
        (tmp_path / "crash").touch()
        assert proc.wait(timeout=20) == 3, proc.output()[-2000:]
        wait_for(lambda: not running(pids[0]), timeout=5,
                 what="the stray gone when register exits")


def test_a_nested_exec_confsyncs_descendants_go_with_it_when_it_dies(tmp_path: Path) -> None:
    """`watch --exec "confsync register --exec ..."` (the settings name a nested confsync): the
    inner one gave its child its own mark in place of the outer one's. Killed (a crash, or the
    outer's SIGKILL after stop_timeout while it drained), it left its child's service and that
    one's setsid port holder to the outer confsync, which did not know them: they lived on, and
    every restart of the inner one failed to bind."""
    log, port = tmp_path / "server.log", free_port()
    (tmp_path / "server.py").write_text(SERVER)
    script = tmp_path / "svc.sh"
    script.write_text(WRAPPER.format(start=WRAPPERS["setsid"].format(python=sys.executable)))
    script.chmod(0o755)
    inner_conf = _confdir(tmp_path / "inner")
    inner = tmp_path / "inner.sh"
    inner.write_text(f'#!/bin/sh\nexec {sys.executable} -m confsync watch --confdir {inner_conf} '
                     f'--backend file --file {tmp_path / "inner" / "data.yaml"} '
                     f'--exec "{script} {tmp_path} {port}"\n')
    inner.chmod(0o755)
    w = WatchProcess("--confdir", str(_confdir(tmp_path)), "--backend", "file",
                     "--file", str(tmp_path / "data.yaml"), "--exec", str(inner),
                     log=tmp_path / "watch.log",
                     env={"CONFSYNC_EXEC_STOP_TIMEOUT": "1s",
                          "CONFSYNC_EXEC_RESTART_DELAY": "100ms"})
    left: list[psutil.Process] = []  # (psutil: never a pid reused since)
    try:
        with _stopped(w) as pids:
            wait_for(lambda: len(_servers(log)) == 1, timeout=20, what="the first server")
            pids.append(int(_servers(log)[0].split()[1]))
            nested = [c for c in psutil.Process(w.proc.pid).children()
                      if "confsync" in c.cmdline()]
            assert len(nested) == 1, nested
            left += nested[0].children()  # the inner child (the wrapper, a loop until killed)
            nested[0].kill()
            wait_for(lambda: not running(pids[0]), timeout=15,
                     what=f"the inner child's stray gone; log:\n{w.output()[-2000:]}")
            wait_for(lambda: len(_servers(log)) >= 2, timeout=20, what="the restart's server")
            assert _servers(log)[1].split()[0] == "bound", _servers(log)
            pids.append(int(_servers(log)[1].split()[1]))
            assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                           for p in left), "the inner child outlived its confsync"
    finally:
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
