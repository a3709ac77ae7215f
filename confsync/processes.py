"""Finding the process a reload signal goes to, and when a process started. Both reload paths
use it; it imports nothing of confsync's but the log helpers, `threaded_call` and
`targets.ReloadFailed` (what a search not answered in time raises).

A search of the process table reads /proc/PID files of other processes, and a read of a
process's `cmdline` waits for its memory map's lock: one process stuck faulting on a dead NFS
or FUSE mount (D state) held it for good, and with it the watch loop (every resource, the
heartbeat, /health, systemd's watchdog ping). So a search reads every process's `stat` (its
name, state, parent, start; no lock taken) and the `cmdline` of only those whose name matches
(or, when none does, of the rest for an argv[0] match); and in `watch` (`bound_searches`) it
runs on a thread of its own, waited for at most SEARCH_PATIENCE: one not answered in time
raises TableNotAnswered (that reload or probe fails, and is tried again), and runs on; while
it has not returned, no other search starts (a stuck table holds one thread, whatever the
retries). `once` and `check` search in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from confsync.logs import Repeats
from confsync.paths import expand_user
from confsync.targets import ReloadFailed
from confsync.threaded_call import ThreadedCall

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)
_stale = Repeats()
T = TypeVar("T")

# Seconds a search of the process table may take in `watch` (one of ~100-1,000 processes takes
# milliseconds; 3 s is far under /health's heartbeat allowance and WatchdogSec).
SEARCH_PATIENCE = 3.0
_COMM_LENGTH = 15  # the kernel's task name: TASK_COMM_LEN less its NUL
_bounded = False  # searches run on a thread, with a deadline (`watch`: bound_searches)
_search_lock = threading.Lock()
_searching: ThreadedCall[Any] | None = None  # the search under way, or the last one


class TableNotAnswered(ReloadFailed):
    """A search of the process table has not returned within SEARCH_PATIENCE: the reload
    (or probe) fails before anything was sent to the target."""

    def __init__(self, message: str) -> None:
        super().__init__(message, untouched=True)


def bound_searches() -> None:
    """Search the process table on a thread, with a deadline, from now on (the watch daemon)."""
    global _bounded
    _bounded = True


def search(what: str, scan: Callable[[], T]) -> T:
    """scan(): in place, or bounded (see the module's doc); raises TableNotAnswered."""
    global _searching
    if not _bounded:
        return scan()
    with _search_lock:
        earlier = _searching
        if earlier is None or earlier.done.is_set():
            earlier = _searching = None
            call: ThreadedCall[T] = ThreadedCall(scan, "confsync-process-search")
            _searching = call
    if earlier is not None:
        if not earlier.wait(SEARCH_PATIENCE):
            raise TableNotAnswered(
                f"the process table did not answer: an earlier search has not returned "
                f"within {SEARCH_PATIENCE:.1f}s (a process stuck on a hung NFS or FUSE mount holds "
                f"reads of /proc?), so {what} is not searched for; tried again")
        return search(what, scan)
    if not call.wait(SEARCH_PATIENCE):
        raise TableNotAnswered(
            f"the process table did not answer: searching /proc for {what} has not returned "
            f"after {SEARCH_PATIENCE:.1f}s (a process stuck on a hung NFS or FUSE mount "
            f"holds reads of /proc?); tried again, one search at a time")
    return call.answer()


def boot_clock() -> float:
    """Seconds since boot (CLOCK_BOOTTIME): the clock of the kernel's process start times, so
    "did this process start after that moment" needs no wall clock (which may jump)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first);
    None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def started_at(pid: int) -> float | None:
    """When process `pid` started, in `boot_clock()` seconds, rounded down to the kernel's
    clock tick (so a value above a time means it surely started after it); None if unknown."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) / os.sysconf("SC_CLK_TCK") if fields else None  # starttime
    except (ValueError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` ('R', 'S', 'Z' ...), None if there is no such
    process."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def _is_named(process: str, name: str, cmdline: list[str]) -> bool:
    """`process` is the process's name (psutil's, completed past the kernel's 15 characters)
    or the basename of its argv[0]."""
    return process in (name, os.path.basename(cmdline[0]) if cmdline else "")


def pidfile_pid(pidfile: Path, process: str | None) -> int | None:
    """The pid in `pidfile` if it names the process meant, else None.

    A pidfile outlives its process (a crash, SIGKILL, a container restarted with its writable
    layer and /run kept), and its number is handed to another process sooner or later; in a
    container, where pids are small, almost at once. A signal sent there (SIGHUP, SIGUSR2)
    reloads or kills the wrong program. So the pid is refused when it is confsync itself, a
    zombie, or, with `process` set too, a process of another name (start-stop-daemon's
    --pidfile with --name); and when another user (not root, not ours) owns the pidfile or a
    link to it, one that user could not signal itself (`_not_theirs`). confsync's parent is
    not refused as such: an HAProxy master that runs confsync in a `program` section is its
    parent and the right target. Each refusal is logged, at most every 5 minutes per pidfile
    and pid.
    """
    try:
        # (A `~user` not known yet, ValueError: as a pidfile not there yet.) Non-blocking and
        # bounded: a FIFO or a link to /dev/zero there must not hold or fill confsync. Nor
        # may a terminal become ours: a session leader (a systemd service, a container's PID
        # 1) opening a user's pty through their link had it as controlling terminal, and
        # their Ctrl-C stopped confsync.
        path = expand_user(pidfile)
        fd = os.open(path,
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            opened = os.fstat(fd)
            # (None: a FIFO whose writer has written nothing yet, as an empty pidfile)
            text = (fh.read(4096) or b"").decode("utf-8").split()
        pid = int(text[0]) if text else 0
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    import psutil  # lazy: only signal-reloading resources pay for it

    why = None
    if pid == os.getpid():
        why = "confsync itself: a stale pidfile"
    else:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None  # exited, not yet reaped: nothing runs to be signalled
                name, cmdline = proc.name(), proc.cmdline()
        except psutil.Error:
            return None  # gone
        if process is not None and not _is_named(process, name, cmdline):
            why = f"{name!r}, not {process!r}: a stale pidfile"
        else:
            why = _not_theirs(path, opened, proc)
    if why is None:
        return pid
    message = f"{pidfile} names pid {pid}, which is {why}, not used"
    if _stale.due(message):
        log.warning("%s", message)
    return None


def _not_theirs(path: Path, opened: os.stat_result, proc: psutil.Process) -> str | None:
    """Why the process the pidfile at `path` (read as `opened`) names is not one its writers could
    signal themselves, or None: a user other than root and ours who owns the pidfile (or a
    link on the way to it) chose the number, and only their own processes may get our signal
    (path_writers.py)."""
    import psutil

    from confsync.path_writers import untrusted_writers

    try:
        writers = untrusted_writers(str(path), opened)
        real, _, saved = proc.uids()
    except (OSError, ValueError, psutil.Error):  # (ValueError: replaced since it was read)
        return "a process whose owner, or its pidfile's, cannot be told"
    others = sorted(uid for uid in writers if uid not in (real, saved))
    if not others:
        return None
    return (f"a process of uid {real}, while uid {others[0]} owns the pidfile or a link to "
            f"it (and so chose the number)")


def find_process(pidfile: Path | None, process: str | None) -> int | None:
    """The target pid: from a pidfile, else the oldest process whose name or argv[0] matches
    (root's or confsync's user's first).

    Oldest, because for a master-worker daemon (HAProxy, nginx) the master is the one that
    started first and the one that must get the signal. A pidfile that is stale (see
    `pidfile_pid`) falls back to the name when `process` is given too. Bounded in `watch`
    (`search`: it reads other processes' memory); raises TableNotAnswered.
    """
    if pidfile is None and process is None:
        return None
    what = " or ".join([f"the process of {pidfile}"] * (pidfile is not None)
                       + [f"the process named {process!r}"] * (process is not None))
    return search(what, lambda: _find_process(pidfile, process))


def _find_process(pidfile: Path | None, process: str | None) -> int | None:
    if pidfile is not None:
        pid = pidfile_pid(pidfile, process)
        if pid is not None or process is None:
            return pid
    return _oldest_named(process) if process is not None else None


def _comm_and_stat(pid: int) -> tuple[str, list[bytes]] | None:
    """The kernel's name of `pid` (its first 15 characters) and the fields of /proc/PID/stat
    after it (the state first); None if there is no such process. (No lock on the process's
    memory is taken: a process stuck in a page fault does not hold this read.)"""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        start, end = data.index(b"("), data.rindex(b")")
    except (OSError, ValueError):
        return None
    return data[start + 1:end].decode(errors="replace"), data[end + 2:].split()


def argv(pid: int) -> list[str]:
    """`pid`'s arguments (read from its memory: this blocks while a fault holds its lock; in
    `search` only), [] when it has none (a kernel thread, a zombie) or is gone."""
    try:
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in data.split(b"\0")[:-1]] if data else []


def _argv0(pid: int) -> str | None:
    """The basename of `pid`'s argv[0], None when it has none."""
    args = argv(pid)
    return os.path.basename(args[0]) if args and args[0] else None


def table() -> list[tuple[int, str, int, int]]:
    """(pid, name, parent pid, start in clock ticks) of each process but zombies."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = _comm_and_stat(int(entry))
        if found is None or len(found[1]) < 20 or found[1][0] == b"Z":
            continue
        name, fields = found
        try:
            rows.append((int(entry), name, int(fields[1]), int(fields[19])))
        except ValueError:
            continue
    return rows


def _oldest_named(process: str) -> int | None:
    """The scan of `find_process`. A name is matched as psutil completes it: the kernel keeps
    15 characters, and a longer one is argv[0]'s basename when it begins with them. Only those
    whose kernel name could be `process` have their argv[0] read; the others' only when none
    matches (a program that renamed itself, one run through /proc/self/exe): a process
    stuck on a hung mount then holds the search only while the target is not running."""
    import psutil  # lazy: only resources that find their target by name pay for it

    rows = table()
    matches = []
    for row in rows:
        name = row[1]
        if name == process or (len(name) >= _COMM_LENGTH and process.startswith(name)
                               and _argv0(row[0]) == process):
            matches.append(row)
    if not matches:
        matches = [row for row in rows if _argv0(row[0]) == process]
    candidates = []
    trusted = (0, os.geteuid())
    for pid, _, ppid, start in matches:
        # Another user's only where no process of root's or ours has the name: anyone may
        # name a program `nginx`, and an older one took the reloads meant for the real one
        # after its restart (which then never reloaded, while confsync said it did). (Owners
        # asked of matches only: the scan runs each second while the target is down.)
        try:
            stranger = psutil.Process(pid).uids().real not in trusted
        except psutil.Error:
            stranger = True
        candidates.append((stranger, start, pid, ppid))
    pids = {c[2] for c in candidates}
    roots = [c for c in candidates if c[3] not in pids]  # skip workers of a matching master
    return min(roots or candidates)[2] if candidates else None
