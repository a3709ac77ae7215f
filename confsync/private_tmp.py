"""A directory of this user's own in TMPDIR, for caches kept between runs.

Made 0700 if missing; taken only when it is a real directory this user owns that nobody else
may write to. Never chmod-ed, nor entered through a link: Jinja2's own choice of its cache
directory chmods `$TMPDIR/_jinja2-cache-<uid>` through whatever is there, so on a system
without fs.protected_symlinks another local user's link there made a root confsync chmod
the directory of their choice (/etc, /usr/bin) to 0700.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def private_directory(name: str) -> Path | None:
    """`$TMPDIR/<name>`, made 0700 if missing; None unless it is a directory that this user
    owns and nobody else may write to (not a link another user planted)."""
    import tempfile

    uid = os.geteuid()
    try:
        base = tempfile.gettempdir()
    except OSError:  # (no usable temporary directory at all)
        return None
    if base == os.getcwd() and os.environ.get("TMPDIR") != base:
        return None  # tempfile's last resort: never a cache in the directory we ran from
    directory = Path(base) / name
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        log.debug("%s not used: %s", directory, exc)
        return None
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        log.debug("%s not used: not a private directory of uid %d", directory, uid)
        return None
    return directory
