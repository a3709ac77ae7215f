"""`check`'s temporary directories, and those of a `check` killed before it removed its own.

`check` renders each resource into a directory of its own in TMPDIR and runs `check_cmd` on
the copy there. A `check` killed meanwhile (a CI job's timeout, the OOM killer, SIGKILL) left
the directory, with the rendered file in it (secrets included), and nothing ever removed it:
one more per killed run. The directory's name now carries its creator's pid
(`confsync-check-<pid>-XXXXXXXX`), and each `check` first removes this user's directories
whose creator is gone (those of a confsync before this naming once they are a day old).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time

from confsync.applier import writer_alive

log = logging.getLogger(__name__)

PREFIX = "confsync-check-"
# Ours (pid, then tempfile's 8 random characters), or an older confsync's (no pid).
_OURS = re.compile(rf"{PREFIX}(?:([0-9]+)-)?[a-z0-9_]{{8}}")
_UNNAMED_AGE = 86400.0  # no check runs a day: an unnamed one this old has no writer
# Never one younger: a `check` in another pid namespace sharing TMPDIR (two containers of a pod
# with one /tmp volume) has a pid this one cannot see, and its directory must outlive its run.
# (Nor a staged file beside a dest, for `check`: sync.plan.)
MIN_AGE = 3600.0


def make_check_dir() -> tempfile.TemporaryDirectory[str]:
    """A new private directory for one `check` run, named after this process."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-")


def remove_dead_check_dirs() -> list[str]:
    """Remove this user's `check` directories in TMPDIR whose creator is gone. Only real
    directories of our own uid (never a link, nor another user's); best effort."""
    removed: list[str] = []
    try:
        base = tempfile.gettempdir()
        names = [n for n in os.listdir(base) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        match = _OURS.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if time.time() - info.st_mtime < MIN_AGE:  # wall clock: file ages (mtimes)
            continue
        if match[1] is not None:
            # (Our own pid on one older than this process: a predecessor's that had our pid;
            # every `check` a container runs is its PID 1.)
            if writer_alive(int(match[1]), info.st_mtime):
                continue
        elif time.time() - info.st_mtime < _UNNAMED_AGE:  # wall clock: file ages (mtimes)
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path)  # (fd-based: a link planted inside is removed, not followed)
            log.info("removed %s, left by a check that was killed", path)
            removed.append(path)
    return removed
