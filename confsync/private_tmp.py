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
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_found: str | None = None  # temporary_directory()'s answer, once found
_FIXED = ("/tmp", "/var/tmp", "/usr/tmp")  # tempfile's candidates on POSIX after the variables


def _named_candidates() -> list[str]:
    """tempfile's candidates before its last resort, the working directory: TMPDIR, TEMP, TMP
    (those set) and the fixed directories."""
    return [d for d in map(os.environ.get, ("TMPDIR", "TEMP", "TMP")) if d] + list(_FIXED)


def temporary_directory() -> str:
    """`tempfile.gettempdir()`, found as tempfile finds it, without importing tempfile when it
    is not imported yet: tempfile imports shutil, and shutil bz2 and lzma with their C
    libraries, 3.5 % of the instructions of a `once` that finds nothing changed (issue 11).

    The first of TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp and the working directory in
    which a file can be created (and is removed at once); FileNotFoundError when none can.
    """
    global _found
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:  # (its answer, kept from its first call, or set by a caller)
        return str(tempfile.gettempdir())
    if _found is not None:  # (kept from the first call, as tempfile keeps its own)
        return _found
    candidates = _named_candidates()
    try:
        candidates.append(os.getcwd())
    except OSError:
        candidates.append(os.curdir)
    for directory in candidates:
        if directory != os.curdir:
            directory = os.path.abspath(directory)
        for _ in range(100):  # (tempfile's number of names tried)
            probe = os.path.join(directory, f"tmp{os.urandom(6).hex()}")
            try:
                fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                try:
                    try:
                        os.write(fd, b"blat")
                    finally:
                        os.close(fd)
                finally:
                    os.unlink(probe)
                _found = directory
                return directory
            except FileExistsError:
                continue
            except OSError:
                break
    raise FileNotFoundError(f"No usable temporary directory found in {candidates}")


def _named(directory: str) -> bool:
    """Whether `directory` is one of tempfile's named candidates (TMPDIR, TEMP, TMP, /tmp, ...),
    not its last resort: run from /tmp (a cron job, a container whose WORKDIR is /tmp), the
    working directory is also the temporary directory asked for."""
    try:
        return directory in map(os.path.abspath, _named_candidates())
    except OSError:  # (a relative TMPDIR under a working directory removed since)
        return False


def private_directory(name: str) -> Path | None:
    """`$TMPDIR/<name>`, made 0700 if missing; None unless it is a directory that this user
    owns and nobody else may write to (not a link another user planted)."""
    uid = os.geteuid()
    try:
        base = temporary_directory()
    except OSError:  # (no usable temporary directory at all)
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # (removed since we started there: a deploy's old release directory)
        cwd = os.curdir
    if base in (cwd, os.curdir) and not _named(base):
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
