"""A pidfile outlives its process and its number goes to another one: a reload signal must
never reach that one (confsync itself, a zombie, a program of another name).
Real processes and real signals."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

import confsync
from confsync.command_reload import CommandReloader
from confsync.processes import find_process, state
from confsync.resources import Resource
from confsync.targets import ReloadKind

REPO = Path(confsync.__file__).parent.parent


def resource(tmp_path: Path, pidfile: Path, process: str | None = None) -> Resource:
    return Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t.tmpl",
                    dest=tmp_path / "app.cfg", keys=("/app",), prefix="",
                    reload_signal=signal.SIGUSR1, pidfile=pidfile, process=process)


@pytest.fixture
def usr1_count() -> Iterator[list[int]]:
    """SIGUSR1s this test process receives (it must receive none)."""
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def named_sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep` under a name of its own, so a name search finds it and nothing else."""
    binary = tmp_path / "cs-target-app"
    shutil.copy("/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_pidfile_naming_confsync_itself_gets_no_signal(
        tmp_path: Path, usr1_count: list[int], caplog: pytest.LogCaptureFixture) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # a restarted container: the old number is ours
    with caplog.at_level(logging.WARNING, logger="confsync.processes"):
        result = CommandReloader(resource(tmp_path, pidfile)).reload()
    time.sleep(0.05)
    assert usr1_count == []
    assert result.kind is ReloadKind.NO_TARGET
    assert "confsync itself: a stale pidfile" in caplog.text


def test_confsyncs_parent_is_signalled_only_under_its_name(
        tmp_path: Path, named_sleeper: subprocess.Popen[bytes]) -> None:
    """An HAProxy master running confsync in a `program` section is its parent and the target;
    a stale number that is now the parent (the container's init) is caught by the name."""
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getppid()}\n")
    assert find_process(pidfile, None) == os.getppid()
    assert find_process(pidfile, "cs-target-app") == named_sleeper.pid


def test_a_pidfile_naming_a_zombie_is_no_target(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state(child.pid) == "Z"
        pidfile = tmp_path / "app.pid"
        pidfile.write_text(str(child.pid))
        assert find_process(pidfile, None) is None
    finally:
        child.wait()


def test_a_pidfile_naming_another_program_falls_back_to_the_name(
        tmp_path: Path, named_sleeper: subprocess.Popen[bytes]) -> None:
    other = subprocess.Popen(["sleep", "30"])  # took the number of the target's old pid
    try:
        pidfile = tmp_path / "app.pid"
        pidfile.write_text(f"{other.pid}\n")
        assert find_process(pidfile, None) == other.pid  # nothing to check it against
        assert find_process(pidfile, "cs-target-app") == named_sleeper.pid
        assert find_process(pidfile, "cs-target-none") is None
        pidfile.write_text(f"{named_sleeper.pid}\n")
        assert find_process(pidfile, "cs-target-app") == named_sleeper.pid
    finally:
        other.kill()
        other.wait()


def test_the_signal_goes_to_the_named_process_not_the_stale_pid(
        tmp_path: Path, usr1_count: list[int]) -> None:
    binary = tmp_path / "cs-usr1-target"
    shutil.copy("/bin/sleep", binary)
    target = subprocess.Popen([str(binary), "30"])  # SIGUSR1 ends a sleep: seen by its exit
    try:
        pidfile = tmp_path / "app.pid"
        pidfile.write_text(f"{os.getpid()}\n")
        result = CommandReloader(resource(tmp_path, pidfile, "cs-usr1-target")).reload()
        assert result.kind is ReloadKind.SIGNAL and str(target.pid) in result.detail
        assert target.wait(timeout=5) == -signal.SIGUSR1
        assert usr1_count == []
    finally:
        target.kill()
        target.wait()


def test_a_refused_pidfile_is_logged_once_per_pid(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    with caplog.at_level(logging.WARNING, logger="confsync.processes"):
        for _ in range(5):
            assert find_process(pidfile, None) is None
    assert caplog.text.count("a stale pidfile") == 1


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user's pidfile and process")
@pytest.mark.parametrize("planted", ["file", "link", "directory link"])
def test_another_users_pidfile_gets_only_that_users_processes_signalled(
        tmp_path: Path, planted: str, caplog: pytest.LogCaptureFixture) -> None:
    """A service's own pidfile (or a link to one, on the way to it) is written by its user:
    its number made a root confsync signal any process (here a root one, ended by SIGUSR1)."""
    rooted = subprocess.Popen(["sleep", "30"])  # root's: SIGUSR1 ends a sleep
    theirs = subprocess.Popen(["sleep", "30"], user=NOBODY)
    pidfile = tmp_path / "app.pid"
    try:
        if planted == "file":
            pidfile.write_text(f"{rooted.pid}\n")
            os.chown(pidfile, NOBODY, NOBODY)
        elif planted == "link":  # root's own file, reached through the user's link
            (tmp_path / "root.pid").write_text(f"{rooted.pid}\n")
            pidfile.symlink_to(tmp_path / "root.pid")
            os.lchown(pidfile, NOBODY, NOBODY)
        else:  # root's own file, through the user's link to a directory
            (tmp_path / "root.pid").write_text(f"{rooted.pid}\n")
            (tmp_path / "run").symlink_to(".")
            os.lchown(tmp_path / "run", NOBODY, NOBODY)
            pidfile = tmp_path / "run" / "root.pid"
        with caplog.at_level(logging.WARNING, logger="confsync.processes"):
            result = CommandReloader(resource(tmp_path, pidfile)).reload()
        assert result.kind is ReloadKind.NO_TARGET, result.detail
        assert f"uid {NOBODY} owns the pidfile or a link to it" in caplog.text
        with pytest.raises(subprocess.TimeoutExpired):
            rooted.wait(timeout=0.2)  # (a signal would end it at once: no race to lose)

        target = pidfile if planted == "file" else tmp_path / "root.pid"
        target.write_text(f"{theirs.pid}\n")  # one of their own: theirs to signal anyway
        result = CommandReloader(resource(tmp_path, pidfile)).reload()
        assert result.kind is ReloadKind.SIGNAL, result.detail
        assert theirs.wait(timeout=5) == -signal.SIGUSR1
    finally:
        for proc in (rooted, theirs):
            proc.kill()
            proc.wait()


def test_a_root_pidfile_reached_through_no_link_of_another_user_is_trusted(
        tmp_path: Path) -> None:
    """Ours and root's pidfiles (and links) name any process, as before."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "real.pid").write_text(f"{other.pid}\n")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "up").symlink_to("..")
        assert find_process(tmp_path / "sub" / "up" / "sub" / ".." / "real.pid",
                            None) == other.pid
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user's process")
def test_a_name_search_takes_roots_process_before_an_older_one_of_another_user(
        tmp_path: Path) -> None:
    """Anyone may name a program `nginx`: a user's, started before the real one restarted, was
    the oldest of the name and took every reload signal (the real one never reloaded)."""
    name = f"cs-named-{os.getpid()}"
    theirs = subprocess.Popen([name, "30"], executable="/bin/sleep", user=NOBODY)
    try:
        assert find_process(None, name) == theirs.pid  # the only one: a service of its user
        time.sleep(0.05)  # (start times count clock ticks: the next one is younger for sure)
        rooted = subprocess.Popen([name, "30"], executable="/bin/sleep")
        try:
            assert find_process(None, name) == rooted.pid
        finally:
            rooted.kill()
            rooted.wait()
    finally:
        theirs.kill()
        theirs.wait()


def test_a_fifo_or_an_endless_file_as_pidfile_names_nothing(tmp_path: Path) -> None:
    """Read without blocking and bounded: a FIFO held the reload (and a probe) for good."""
    fifo = tmp_path / "app.pid"
    os.mkfifo(fifo)
    assert find_process(fifo, None) is None
    (tmp_path / "zero.pid").symlink_to("/dev/zero")
    assert find_process(tmp_path / "zero.pid", None) is None


def test_a_fifo_with_a_silent_writer_names_nothing(tmp_path: Path) -> None:
    """A FIFO held open by a writer that wrote nothing reads as None (no data yet), not b"":
    it raised AttributeError out of the reload and the probe."""
    fifo = tmp_path / "app.pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert find_process(fifo, None) is None
    finally:
        os.close(writer)
        os.close(reader)


def test_a_removed_working_directory_refuses_no_absolute_pidfile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A daemon started in a directory removed since (a deploy's release directory): getcwd()
    fails, which refused every pidfile ("cannot be told") and so every reload, for good."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        pidfile = tmp_path / "app.pid"
        pidfile.write_text(f"{other.pid}\n")
        gone = tmp_path / "release"
        gone.mkdir()
        monkeypatch.chdir(gone)
        gone.rmdir()
        with caplog.at_level(logging.WARNING, logger="confsync.processes"):
            assert find_process(pidfile, None) == other.pid
        assert "cannot be told" not in caplog.text
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: another user's directory")
def test_root_pidfile_linked_into_another_users_directory_names_only_their_processes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With fs.protected_hardlinks=0 anyone may hard-link root's pidfile of another service
    into a directory of theirs: a file of root's, reached through no link, was trusted. (Root
    makes the link here: what that user could.) One name only, as a root daemon writes in its
    user's /run/<app>/, it still is."""
    rooted = subprocess.Popen(["sleep", "30"])  # root's: SIGUSR1 ends a sleep
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)
    try:
        (tmp_path / "other.pid").write_text(f"{rooted.pid}\n")
        os.link(tmp_path / "other.pid", run / "app.pid")
        with caplog.at_level(logging.WARNING, logger="confsync.processes"):
            result = CommandReloader(resource(tmp_path, run / "app.pid")).reload()
        assert result.kind is ReloadKind.NO_TARGET, result.detail
        assert f"uid {NOBODY} owns the pidfile or a link to it" in caplog.text
        with pytest.raises(subprocess.TimeoutExpired):
            rooted.wait(timeout=0.2)  # (a signal would end it at once: no race to lose)

        shared = tmp_path / "shared"  # root's, but anyone may add names (as /tmp)
        shared.mkdir()
        shared.chmod(0o1777)
        os.link(tmp_path / "other.pid", shared / "app.pid")
        assert find_process(shared / "app.pid", None) is None

        (run / "app.pid").unlink()
        (run / "app.pid").write_text(f"{rooted.pid}\n")  # root's own, one name
        result = CommandReloader(resource(tmp_path, run / "app.pid")).reload()
        assert result.kind is ReloadKind.SIGNAL, result.detail
        assert rooted.wait(timeout=5) == -signal.SIGUSR1
    finally:
        rooted.kill()
        rooted.wait()


def test_a_terminal_as_pidfile_does_not_become_confsyncs_controlling_terminal(
        tmp_path: Path) -> None:
    """A session leader without a terminal (a systemd service, a container's PID 1) that
    opened a pty named by a pidfile (a user's link to their own terminal) took it as its
    controlling terminal: their Ctrl-C then sent SIGINT to confsync."""
    master, slave = os.openpty()
    try:
        (tmp_path / "app.pid").symlink_to(os.ttyname(slave))
        code = ("import os, sys\n"
                "from pathlib import Path\n"
                "from confsync.processes import find_process\n"
                "assert find_process(Path(sys.argv[1]), None) is None\n"
                "try:\n"
                "    os.close(os.open('/dev/tty', os.O_RDONLY))\n"
                "except OSError:\n"
                "    print('no controlling terminal')\n"
                "else:\n"
                "    print('controlling terminal acquired')\n")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "app.pid")],
                              start_new_session=True, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.stdout.strip() == "no controlling terminal", done.stdout + done.stderr
    finally:
        os.close(slave)
        os.close(master)
