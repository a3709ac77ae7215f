"""Keep confsync's per-user caches in the temporary directory from growing over months.

The Jinja2 bytecode cache (one file per template path: a confdir deployed to a new directory
each release adds one per release) and the render memo (one file per resource name and dest:
renamed or removed resources leave theirs) were never pruned, nor were the staged files of a
writer killed before its rename. So each time an entry is written (the only time a cache
grows), and at most once an hour (one `stat` of a marker file otherwise), the directory is
swept: entries not used for a week go, then the least recently used beyond a cap (never one
used within the day), and staged files older than an hour. A use refreshes an entry's mtime
at most once a day (the kernel's atime is not reliable: noatime, relatime). Strictly best
effort: a cache that cannot be swept only keeps its files, it never fails a render.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

SWEEP_EVERY = 3600.0  # seconds between sweeps of one directory
MAX_AGE = 7 * 86400.0  # an entry unused this long goes (it costs one render or compile)
MAX_ENTRIES = 1000  # beyond this, the least recently used go (but none used within the day)
LEFTOVER_AGE = 3600.0  # a staged file this old has no writer (a writer takes milliseconds)
MAX_UNLINKS = 500  # per sweep: a first sweep of a huge directory must not stall a render
REFRESH_AFTER = 86400.0  # an entry's mtime is moved on by a use at most this often
MARKER = "confsync-swept"  # its mtime: when the directory was last swept in full
# An mtime further ahead than this was written by a clock that was wrong (a VM booted with a
# bad RTC, set right later): taken as "long ago", or a marker and the entries of that time
# would count as "swept within the hour" and "used within the day" until the clock caught up.
AHEAD = 3600.0


def refresh(fd: int) -> None:
    """Mark the entry open at `fd` as used now, unless that was done less than a day ago."""
    with contextlib.suppress(OSError):
        age = time.time() - os.fstat(fd).st_mtime  # wall clock: file ages (mtimes)
        if age > REFRESH_AFTER or age < -AHEAD:
            os.utime(fd)


def maybe_sweep(directory: str, is_entry: Callable[[str], bool],
                is_staged: Callable[[str], bool]) -> None:
    """Sweep `directory` unless it was swept in full within the hour. Only names `is_entry`
    or `is_staged` accepts are ever removed (the Jinja2 directory is shared with other users
    of Jinja2)."""
    marker = os.path.join(directory, MARKER)
    now = time.time()  # wall clock: file ages (mtimes)
    try:
        if -AHEAD <= now - os.stat(marker, follow_symlinks=False).st_mtime < SWEEP_EVERY:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    with contextlib.suppress(OSError):
        if sweep(directory, is_entry, is_staged, now):
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.utime(fd)
            finally:
                os.close(fd)


def sweep(directory: str, is_entry: Callable[[str], bool], is_staged: Callable[[str], bool],
          now: float) -> bool:
    """Remove stale entries and staged leftovers; True when nothing was left to remove (a
    sweep stops at MAX_UNLINKS, and the next write goes on with it)."""
    entries: list[tuple[float, str]] = []  # those not used within the day
    live = 0
    doomed: list[str] = []
    with os.scandir(directory) as found:
        for entry in found:
            name = entry.name
            staged = is_staged(name)
            if not staged and not is_entry(name):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if staged:
                if now - mtime > LEFTOVER_AGE:
                    doomed.append(name)
            elif now - mtime > MAX_AGE or now - mtime < -AHEAD:
                doomed.append(name)
            elif now - mtime > REFRESH_AFTER:
                entries.append((mtime, name))
            else:
                live += 1
    excess = live + len(entries) - MAX_ENTRIES
    if excess > 0:  # never one used within the day: a confdir of 2,000 templates keeps them
        entries.sort()
        doomed.extend(name for _, name in entries[:excess])
    for name in doomed[:MAX_UNLINKS]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
    return len(doomed) <= MAX_UNLINKS
