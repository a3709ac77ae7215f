"""Start a watchdog observer that cannot fail for want of inotify.

inotify instances are a per-user budget (`fs.inotify.max_user_instances`, 128 by default) shared
with every other program of the same user, and watches another (`max_user_watches`). On a busy
host either runs out, and watchdog then raises OSError at start. A sidecar must not exit for
that: it falls back to polling the same directories, which sees the same edits a second later.

watchdog's own failed start can leak its inotify descriptor (its reader thread may end before
it closes it): an instance of that same budget, and two pipe descriptors, at each attempt. So
the budget is tried first on an inotify instance of our own, closed here, and every observer
is stopped through `stop_observer`, which closes what such a reader left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from confsync.logs import Repeats

log = logging.getLogger(__name__)
# A watcher started again and again (each failing) said it polls once, not at each start.
_polling_said = Repeats()

POLL_INTERVAL = 1.0  # seconds between scans when inotify is not available


def start_observer(handler: Any, paths: Sequence[str], *, recursive: bool,
                   what: str, native: Any = None) -> Any:
    """A started, daemonic observer calling `handler` for events under `paths`.

    `native` is the observer class to try first (watchdog's platform default when None)."""
    short = None
    if native is None:
        from watchdog.observers import Observer as native
        short = _inotify_short(paths, recursive)
    if short is None:
        try:
            return _start(native(), handler, paths, recursive)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise  # polling cannot watch what is not there either: the caller says what is missing
        except OSError as exc:
            short = exc
    from watchdog.observers.polling import PollingObserver

    reason = short.strerror or str(short)
    log.log(logging.WARNING if _polling_said.due(f"{what}: {reason}") else logging.DEBUG,
            "%s: cannot watch with inotify (%s); polling every %.0fs instead", what, reason,
            POLL_INTERVAL)
    return _start(PollingObserver(timeout=POLL_INTERVAL), handler, paths, recursive)


# The errors that mean the budget is used up, in watchdog's words.
_SHORT = {
    errno.ENOSPC: "inotify watch limit reached",
    errno.EMFILE: "inotify instance limit reached",
    errno.ENOMEM: os.strerror(errno.ENOMEM),
}


def _inotify_short(paths: Sequence[str], recursive: bool) -> OSError | None:
    """Why inotify cannot watch every directory under `paths` now (None: it can, or this is
    no Linux), tried on an instance of our own that is closed before returning."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        return None
    fd = libc.inotify_init1(os.O_CLOEXEC)  # IN_CLOEXEC is O_CLOEXEC
    try:
        if fd < 0:
            return _short(ctypes.get_errno())
        for directory in _directories(paths, recursive):
            if libc.inotify_add_watch(fd, os.fsencode(directory), 0x100) < 0:  # IN_CREATE
                short = _short(ctypes.get_errno())
                if short is not None:
                    return short  # anything else (gone, unreadable) is for watchdog to say
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _short(number: int) -> OSError | None:
    return OSError(number, _SHORT[number]) if number in _SHORT else None


def _directories(paths: Sequence[str], recursive: bool) -> Iterator[str]:
    """The directories a watch of `paths` takes, as watchdog's inotify observer counts them
    (links to directories are not followed)."""
    for path in paths:
        yield path
        if recursive:
            for root, names, _ in os.walk(path):
                for name in names:
                    if not os.path.islink(os.path.join(root, name)):
                        yield os.path.join(root, name)


def _start(observer: Any, handler: Any, paths: Sequence[str], recursive: bool) -> Any:
    try:
        for path in paths:
            observer.schedule(handler, path, recursive=recursive)
        observer.daemon = True
        observer.start()
    except BaseException:
        stop_observer(observer)  # releases whatever inotify descriptors were already taken
        raise
    return observer


def stop_observer(observer: Any) -> None:
    """Stop `observer` and release its inotify instance, also where watchdog does not.

    watchdog's inotify reader (7.x) leaves closing its descriptors to its own thread when it
    is stopped while that thread may be reading, and it takes a thread that has not read yet
    for one that is: stopped before its first read (a schedule that failed on a missing
    directory, a watcher stopped right after its start), the thread ends without closing them.
    An inotify instance and a pipe leaked per such stop (82 of 200 starts on a missing
    directory), the file backend's retries while its data directory was gone among them, until
    the user's inotify instances (128) ran out. Closed here when the reader ended that way:
    closed and still "reading" is the state only that path leaves (every close clears it).
    """
    observer.stop()  # stops and joins the reader thread
    reader = getattr(observer, "_inotify_fd", None)
    if reader is None or not hasattr(reader, "_close_resources"):
        return  # polling, or a watchdog whose reader closes its own (4.x-6.x)
    with contextlib.suppress(RuntimeError):  # never started
        reader.join(timeout=5)
    if (not reader.is_alive() and getattr(reader, "_closed", False)
            and getattr(reader, "_is_reading", False)):
        reader._is_reading = False  # a second stop must not close these numbers again
        with contextlib.suppress(OSError):
            reader._close_resources()
