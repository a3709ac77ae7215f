"""The file a service still runs while its reload is owed, kept beside dest across a kill.

Between installing a file and its reload finishing, confsync can be killed (the OOM killer, a
SIGKILL, a crash, a power cut). The file at dest is then current and the service runs the one
before, and a successor had no way to tell: nothing says which file a `reload_cmd` service read
(nginx's master never restarts), nor whether HAProxy under the runtime strategy took a
structural change (a file newer than its worker is the rule there). It found the file "up to
date" and left the service on the old configuration until the next change in etcd.

So from just before the rename until the reload is done, the replaced file is kept as a hard
link, `.<name>.confsync-running` (no copy: the old inode lives on under a second name; an
empty file when there was no file before, or the filesystem has no hard links). A successor
that finds one reloads, and knows what the service ran: HAProxy's runtime strategy brings the
servers in step from it, or reloads when the difference is structural.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".confsync-running"


def running_copy(path: Path) -> Path:
    """Where the file a service runs is kept while `path`'s reload is owed."""
    return path.with_name(f".{path.name}{SUFFIX}")


def keep_running(path: Path) -> bool:
    """Just before `path` is replaced: keep the file being replaced, unless a copy is kept
    already (a reload owed from before: the service still runs that one). True when a copy
    was made here. Best effort: at worst a successor does not know, as before."""
    copy = running_copy(path)
    try:
        os.link(path, copy, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # no file before (ENOENT); vfat (EPERM); protected_hardlinks
        reason = exc.strerror
    try:  # empty: known to be owed, not what the service runs
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        log.debug("cannot keep %s while its reload is owed (%s, then %s)", path, reason,
                  exc.strerror)
        return False
    os.close(fd)
    return True


def read_kept(path: Path) -> tuple[bytes, os.stat_result] | None:
    """What a predecessor kept for `path` (content, status), or None when nothing is kept.

    Only a regular file of confsync's own user counts, opened without following a link: in a
    directory others can write, someone must not get confsync to take the file of their
    choice for "what the service ran" (a failed reload puts that back at dest)."""
    copy = running_copy(path)
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        log.warning("%s is not a file confsync kept (%s); ignored", copy, exc.strerror)
        return None
    with open(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            log.warning("%s is not a file confsync kept (owner uid %d, not a regular file or "
                        "not ours); ignored", copy, info.st_uid)
            return None
        return fh.read(), info


def reloaded(path: Path) -> None:
    """The service runs the file at `path` now: nothing is owed."""
    copy = running_copy(path)
    try:
        os.unlink(copy)
    except FileNotFoundError:
        pass
    except OSError as exc:  # (a successor reloads once more: harmless)
        log.debug("cannot remove %s: %s", copy, exc.strerror)
