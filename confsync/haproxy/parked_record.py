"""The servers this confsync parked in HAProxy, kept beside dest so that a restart finishes them.

A server etcd removes while it holds connections is parked: maintenance now, deleted once they
close (control.py). Known in memory only, a restart of confsync (an upgrade, a crash) left them
in HAProxy until its next reload; taking as parked every server in maintenance the file does
not name deleted an operator's runtime-added one (nothing in HAProxy tells them apart). So the
record names them, with the worker they were parked in (`show info`'s pid and start time) and
the admin socket it answers on. A successor takes over exactly those the same worker still has
in maintenance and the file does not name (`still_parked`); a record of another worker (HAProxy
reloaded or restarted since), of another socket, of another user, or unreadable is ignored with
one log line.

Written by one thread of its own, the latest content per record (the daemon's loop never waits
for a disk, frozen or slow), through a temporary file and a rename. Not fsynced: a kernel crash
that loses it ends the HAProxy worker it names as well.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from confsync.haproxy.runtime import LiveServer, Worker, replace_file
from confsync.logs import Repeats

if TYPE_CHECKING:
    from confsync.haproxy.config_model import HAProxyConfig

log = logging.getLogger(__name__)

SUFFIX = ".confsync-parked"
FORMAT = "confsync-haproxy-parked-1"
MAX_SIZE = 4 * 1024 * 1024  # bytes read at most: 5,000 parked names take about 150 kB
IDLE_SECONDS = 30.0  # the writer thread ends after this long with nothing to write
EXIT_PATIENCE = 1.0  # seconds a clean exit waits for the last write (a frozen disk: no more)
_WRITE_WARNINGS = Repeats()  # a record that cannot be written is so at every change
# "backend/server" in the characters HAProxy allows in names: a name goes into commands
# (`del server`), where `;` would start another.
_REF = re.compile(r"[A-Za-z0-9_.:-]+/[A-Za-z0-9_.:-]+")


def record_path(dest: Path) -> Path:
    """Where the record of the servers parked for the file at `dest` is kept."""
    return dest.with_name(f".{dest.name}{SUFFIX}")


@dataclass(frozen=True)
class ParkedRecord:
    """Servers ("backend/server") parked in `worker`, which answers on `admin_socket`."""

    admin_socket: str
    worker: Worker
    servers: frozenset[str]

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "admin_socket": self.admin_socket,
                           "worker": {"pid": self.worker.pid,
                                      "start_time_sec": self.worker.started},
                           "servers": sorted(self.servers)}).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> ParkedRecord:
        """The record `raw` holds; ValueError (saying what is wrong) when it holds none."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record")
        worker, socket, servers = data.get("worker"), data.get("admin_socket"), data.get("servers")
        pid, started = (worker.get("pid"), worker.get("start_time_sec")) if isinstance(
            worker, dict) else (None, None)
        if not (_number(pid) and _number(started) and isinstance(socket, str)
                and isinstance(servers, list)
                and all(isinstance(s, str) and _REF.fullmatch(s) for s in servers)):
            raise ValueError("fields missing or of the wrong type")
        return cls(socket, Worker(pid, started), frozenset(servers))

    def ignored_because(self, admin_socket: str, worker: Worker | None) -> str | None:
        """Why the servers named do not concern the HAProxy worker `worker` answering on
        `admin_socket`, else None."""
        if admin_socket != self.admin_socket:
            return f"written for another admin socket ({self.admin_socket})"
        if worker != self.worker:
            now = "does not say its pid and start time" if worker is None or (
                worker.started is None) else f"is pid {worker.pid}, started {worker.started}"
            return (f"HAProxy was reloaded or restarted since (it was written for worker pid "
                    f"{self.worker.pid}, started {self.worker.started}; the worker now {now}): "
                    "its servers went with that worker")
        return None


def _number(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def still_parked(record: ParkedRecord, live: dict[str, dict[str, LiveServer]],
                 new: HAProxyConfig) -> set[str]:
    """The servers `record` names that are parked still: in maintenance in the HAProxy that
    `live` shows (the worker the record names), in a backend of `new` (this resource's file)
    that has no `server` line nor `server-template` slot of that name. Anything else is left
    alone: set ready by someone, or one etcd wants back (the pass brings it to the file)."""
    found = set()
    for ref in record.servers:
        name, _, server = ref.partition("/")
        backend = new.backends.get(name)
        now = live.get(name, {}).get(server)
        if backend is not None and now is not None and now.maint and not (
                server in backend.servers or backend.is_slot(server)):
            found.add(ref)
    return found


def read_record(path: Path) -> ParkedRecord | None:
    """The record at `path`; None when there is none, or (said in one log line) when it is
    unreadable, not a regular file of confsync's own user, or no record.

    Opened without following a link, as the running copy is (running_copy.py): someone who may
    write beside dest must not get confsync to delete the servers of their choice."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        log.warning("%s is not a record of parked servers confsync wrote (%s); ignored", path,
                    exc.strerror)
        return None
    try:
        with open(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                log.warning("%s is not a record of parked servers confsync wrote (owner uid %d, "
                            "not a regular file or not ours); ignored", path, info.st_uid)
                return None
            raw = fh.read(MAX_SIZE + 1)
        if len(raw) > MAX_SIZE:
            raise ValueError(f"larger than {MAX_SIZE} bytes")
        return ParkedRecord.decode(raw)
    except (OSError, ValueError) as exc:
        log.warning("%s, the record of servers an earlier run parked in HAProxy, is unreadable "
                    "(%s); ignored: they stay until HAProxy's next reload", path, exc)
        return None


class _Writer:
    """One thread writing every record of this process: the latest of each path (None: remove
    it), encoded there too (5,000 names: 1.6 ms). A write that blocks (a frozen filesystem)
    holds this thread alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Path, ParkedRecord | None] = {}
        self._busy = False  # a write is under way
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def put(self, path: Path, record: ParkedRecord | None) -> None:
        with self._cond:
            self._due[path] = record
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="confsync-parked-record")
                self._thread.start()
                if not self._at_exit:
                    self._at_exit = True
                    atexit.register(self.flush, EXIT_PATIENCE)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything put is written, at most `timeout` seconds; True if it was."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._due and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: bool(self._due), IDLE_SECONDS):
                    self._thread = None
                    return
                path = next(iter(self._due))
                record = self._due.pop(path)
                self._busy = True
            try:
                _write(path, None if record is None else record.encode())
            except Exception:  # (never the end of this thread: later records wait on it)
                log.exception("cannot write %s", path)


def _write(path: Path, content: bytes | None) -> None:
    try:
        if content is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            replace_file(path, content, new_mode=0o600)
    except OSError as exc:
        message = (f"cannot {'remove' if content is None else 'write'} {path} ({exc.strerror}): "
                   "a restart of confsync " + ("takes a server it names that the same HAProxy "
                                               "worker has in maintenance for one parked still"
                                               if content is None else
                                               "leaves the servers parked now to HAProxy's next "
                                               "reload"))
        if _WRITE_WARNINGS.due(message):
            log.warning("%s", message)


_WRITER = _Writer()


def save(path: Path, record: ParkedRecord | None) -> None:
    """Have `record` written at `path` (None: removed) soon, off the caller's thread."""
    _WRITER.put(path, record)


def flush(timeout: float) -> bool:
    """Wait for the records saved so far to be written (tests; a clean exit does it too)."""
    return _WRITER.flush(timeout)
