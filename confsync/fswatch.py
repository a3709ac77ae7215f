"""Start a watchdog observer that cannot fail for want of inotify.

inotify instances are a per-user budget (`fs.inotify.max_user_instances`, 128 by default) shared
with every other program of the same user, and watches another (`max_user_watches`). On a busy
host either runs out, and watchdog then raises OSError at start. A sidecar must not exit for
that: it falls back to polling the same directories, which sees the same edits a second later.
"""

from __future__ import annotations

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
        observer.stop()  # releases whatever inotify descriptors were already taken
        raise
    return observer
