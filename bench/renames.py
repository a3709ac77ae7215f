"""When a file is renamed into place, stamped by a thread that reads inotify and nothing else.

The put -> file benches timed the rename through watchdog's observer, which passes each event
through three threads (inotify reader, buffer, dispatcher) before the handler stamps it: 1.4 to
1.8 ms after the rename, and longer when the measured process keeps the CPU busy right after
it (a directory fsync, a reload's fork), so part of the figure was the observer's and part how
busy the writer left a 2-core machine. Here the stamp is taken as the blocking read returns.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import struct
import threading
import time
from pathlib import Path

_IN_MOVED_TO = 0x00000080
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_libc = ctypes.CDLL(None, use_errno=True)


def _checked(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


class RenameWatch:
    """Puts `time.perf_counter()` on `events` for every rename onto `dest` (an atomic swap)."""

    def __init__(self, dest: Path) -> None:
        self._name = dest.name.encode()
        self._fd = _checked(_libc.inotify_init1(os.O_CLOEXEC))
        _checked(_libc.inotify_add_watch(self._fd, os.fsencode(dest.parent), _IN_MOVED_TO))
        self._stop_r, self._stop_w = os.pipe()
        self.events: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bench-renames", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data = os.read(self._fd, 65536)
            now = time.perf_counter()
            at = 0
            while at < len(data):
                _, _, _, length = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size:at + _EVENT.size + length].rstrip(b"\0")
                at += _EVENT.size + length
                if name == self._name:
                    self.events.put(now)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
