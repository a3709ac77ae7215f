"""Who, besides root and confsync's own user, could have written what a path leads to.

confsync acts on the number a pidfile holds: a root confsync sends its reload signal there.
A pidfile its service writes as its own user (`/run/app/app.pid`, owned by `app`), or a link
such a user planted on the way to it, lets that user choose the number, and so have root
signal any process (SIGUSR2 ends most). Knowing who could have written it, the caller can
accept only a process that user could signal itself (systemd refuses such a PIDFile= alike).
"""

from __future__ import annotations

import errno
import os
import stat

_MAX_LINKS = 40  # as the kernel's ELOOP


def untrusted_writers(path: str, opened: os.stat_result) -> set[int]:
    """The owners, other than root and our effective uid, of the file `opened` (its fstat) and
    of every symbolic link met on the way to it from `path` (and, for a file of several
    names, of the directory holding this one). Raises OSError as opening it would, and
    ValueError when `path` no longer leads to that file (replaced since: whoever did so may
    have chosen both) or names a file of several names in a directory others may write to."""
    owners: set[int] = set()
    # (Not abspath: `..` after a link. The working directory only for a relative path: a
    # daemon's may have been removed, and getcwd() then fails for every absolute pidfile.)
    todo = (path if path.startswith("/") else os.path.join(os.getcwd(), path)).split("/")
    current, links = "/", 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        info = os.lstat(candidate)
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        owners.add(info.st_uid)
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = "/"
        todo[:0] = target.split("/")
    found = os.stat(current)
    if (found.st_dev, found.st_ino) != (opened.st_dev, opened.st_ino):
        raise ValueError(f"{path} was replaced")
    owners.add(opened.st_uid)
    if opened.st_nlink > 1:
        # Another name elsewhere: where fs.protected_hardlinks is 0 anyone may link any file
        # (root's pidfile of another service) into a directory of theirs, so whoever may add
        # names to the one holding ours chose it too. (One name: the usual root daemon's
        # pidfile in its user's /run/<app>/ stays trusted.)
        holder = os.stat(os.path.dirname(current))
        if holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(f"{path} has {opened.st_nlink} names, one in a directory that "
                             "others may write to")
        owners.add(holder.st_uid)
    return owners - {0, os.geteuid()}
