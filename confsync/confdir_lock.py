"""One `confsync watch` per confdir: an flock on the confdir directory itself.

Two daemons on one confdir (a debug `watch` left in tmux beside the systemd one, two units
pointing at the same directory) both wrote every dest and both reloaded, and once their views
differed (another `--prefix`, another version) each took the other's file for an outside edit
and put its own back, for good (8 flips and 12 reloads in 20 s), one of them saying ready.
`watch` holds an exclusive lock for its life; `once` holds a shared one while it runs, so it
never races a daemon, and a daemon starting meanwhile waits for it. `check` writes nothing and
takes none. `register` holds a shared one on register.d, only to name another registrar there.

The lock is on the directory's own descriptor (opened read-only, O_CLOEXEC: an exec child
never inherits it), so it needs no file of its own (a read-only ConfigMap mount works), it
names the same inode whatever path leads there, and the kernel drops it when the process
dies, however it dies. Two confdirs writing different files into one directory are two
locks: that stays allowed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class Holder:
    """A process holding a lock on the confdir, as /proc/locks shows it. (A plain class: a
    dataclass cost every `once` its creation, for a conflict that rarely happens.)"""

    __slots__ = ("exclusive", "pid")

    def __init__(self, pid: int | None, exclusive: bool) -> None:
        self.pid = pid  # None: not visible from here (another PID namespace)
        self.exclusive = exclusive

    def describe(self) -> str:
        if self.pid is None:
            return "a process whose pid is not visible here (another container?)"
        command = _command_line(self.pid)
        return f"pid {self.pid}" + (f": {command}" if command else "")


class Held(Exception):
    """The lock is held by someone else: `by_daemon`, exclusively (a `watch`), else only
    shared (`once` runs); `holders` say who (empty: could not tell)."""

    def __init__(self, directory: Path, holders: tuple[Holder, ...], by_daemon: bool) -> None:
        self.directory = directory
        self.holders = holders
        self.by_daemon = by_daemon
        super().__init__(f"{directory} is locked by {self.describe()}")

    def describe(self) -> str:
        return ", ".join(h.describe() for h in self.holders) or "another process"


def _open(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def try_lock(directory: Path, exclusive: bool) -> int:
    """The descriptor holding the lock on `directory` (kept open for as long as it is to be
    held; closing it, or the process's end, releases it). Raises Held, or OSError when the
    directory cannot be opened (the caller's load of conf.d says why)."""
    fd = _open(directory)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            # Refused a shared lock: an exclusive holder. Refused an exclusive one: asked
            # for a shared one, the kernel tells, where /proc/locks may not (it hides the
            # locks of processes outside this PID namespace: a `once` in another container).
            raise Held(directory, holders_of(fd),
                       not exclusive or _exclusive_held(directory)) from None
        finally:
            os.close(fd)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ENOLCK:  # a filesystem without flock (rare): run unlocked
            return -1
        raise
    return fd


def lock_daemon(directory: Path, waiting: Callable[[Held], None],
                stop: Callable[[], bool], poll: float = 0.1) -> int | None:
    """The exclusive lock of a `watch`. While only `once` runs or a stopping `watch` hold it
    (shared), wait for them (`waiting` is told once); another daemon raises Held at once.
    None: `stop()` came true while waiting."""
    told = False
    while True:
        try:
            return try_lock(directory, exclusive=True)
        except Held as held:
            if held.by_daemon:
                raise
            if not told:
                waiting(held)
                told = True
        if stop():
            return None
        time.sleep(poll)


def _exclusive_held(directory: Path) -> bool:
    """Whether someone holds `directory`'s lock exclusively (a shared one is refused)."""
    try:
        fd = _open(directory)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (a shared lock taken here goes with it)
    return False


def step_down(fd: int) -> None:
    """A stopping `watch` keeps its lock shared only: a `watch` started meanwhile (a restart
    that does not wait, a DaemonSet's next pod) waits for this process to end, as for a
    `once`, instead of refusing (exit 2, not restarted) while the exec child is stopped."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)


def release(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def same_directory(fd: int | None, directory: Path) -> bool:
    """Whether `directory` is the one `fd` locks (by inode: any path to it is the same)."""
    if fd is None or fd < 0:
        return False
    try:
        held, there = os.fstat(fd), os.stat(directory)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


class DaemonLocks:
    """The confdir locks a running `watch` holds: its confdir's, and, while a reload moves
    to another confdir, that one's too. `active` says whether it locks at all (started
    without a lock: in-process runs, tests), which stays so while every lock may be let go of
    for a while (a confdir gone when a reload was refused) and taken again."""

    def __init__(self, fd: int) -> None:
        self.active = fd >= 0
        self._fds: list[int] = [fd] if fd >= 0 else []

    def holds(self, directory: Path) -> bool:
        """Whether `directory` is locked by us (always true when not `active`)."""
        return not self.active or any(same_directory(fd, directory) for fd in self._fds)

    def take(self, directory: Path) -> int:
        """Lock `directory` exclusively too; its descriptor, -1 on a filesystem without
        flock. Raises Held, or OSError when it cannot be opened."""
        fd = try_lock(directory, exclusive=True)
        if fd >= 0:
            self._fds.append(fd)
        return fd

    def keep_only(self, directories: Sequence[Path]) -> None:
        """Let go of the locks of every directory but these."""
        for fd in list(self._fds):
            if not any(same_directory(fd, d) for d in directories):
                self._fds.remove(fd)
                release(fd)

    def step_down(self) -> None:
        """Stopping: hold every lock shared only (`step_down`)."""
        for fd in self._fds:
            step_down(fd)


def daemon_holding(directory: Path) -> str:
    """Who holds `directory`'s exclusive lock (a running `watch`), described; "" when nobody
    does. Holds no lock after (`check`, which writes nothing)."""
    try:
        fd = _open(directory)
    except OSError:
        return ""
    try:
        if not _exclusive_held(directory):
            return ""
        return ", ".join(h.describe() for h in holders_of(fd) if h.exclusive) \
            or Holder(None, True).describe()
    except OSError:
        return ""
    finally:
        os.close(fd)


def holders_of(fd: int) -> tuple[Holder, ...]:
    """The granted flock locks on `fd`'s inode, from /proc/locks (empty when unreadable).

    /proc/locks names the device as the superblock's, which a stat of a btrfs subvolume or an
    overlay does not always give: the inode number alone is matched when the device does not.
    """
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    exact: list[Holder] = []
    by_inode: list[Holder] = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter has "->" after the number
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid = int(fields[4]) if fields[4].lstrip("-").isdigit() else 0
        holder = Holder(pid if pid > 0 else None, fields[3] == "WRITE")
        if fields[5] == device:
            exact.append(holder)
        elif fields[5].rsplit(":", 1)[-1] == str(info.st_ino):
            by_inode.append(holder)
    return tuple(exact or by_inode)


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(part.decode("utf-8", "backslashreplace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 200 else text[:197] + "..."
