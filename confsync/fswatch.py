"""Start a watchdog observer that cannot fail for want of inotify.

inotify instances are a per-user budget (`fs.inotify.max_user_instances`, 128 by default) shared
with every other program of the same user, and watches another (`max_user_watches`). On a busy
host either runs out, and watchdog then raises OSError at start. A sidecar must not exit for
that: it falls back to polling the same directories, which sees the same edits a second later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between scans when inotify is not available


def start_observer(handler: Any, paths: Sequence[str], *, recursive: bool,
                   what: str, native: Any = None) -> Any:
    """A started, daemonic observer calling `handler` for events under `paths`.

    `native` is the observer class to try first (watchdog's platform default when None)."""
    if native is None:
        from watchdog.observers import Observer as native
    try:
        return _start(native(), handler, paths, recursive)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise  # polling cannot watch what is not there either: the caller says what is missing
    except OSError as exc:
        from watchdog.observers.polling import PollingObserver

        log.warning("%s: cannot watch with inotify (%s); polling every %.0fs instead",
                    what, exc.strerror or exc, POLL_INTERVAL)
        return _start(PollingObserver(timeout=POLL_INTERVAL), handler, paths, recursive)


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
