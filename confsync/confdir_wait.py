"""A daemon started before its confdir's files are there waits for them.

At boot the confdir (or its `conf.d/`, `register.d/`) may be a mount point not mounted yet (NFS,
a volume attached late), which shows as an empty directory; config management may not have
filled `conf.d/` yet. Loading it then found nothing and exited 2, which the shipped units never
restart (RestartPreventExitStatus=2): the node stayed unmanaged. An empty directory is a state
of the machine, so `watch` and `register` wait for it to fill, for a `--config` file missing
from an empty directory (the shipped units name /etc/confsync/confsync.toml), and for the user
of a confdir under `~user/` the system does not know yet (a package or LDAP adds it); a path
that does not exist (a typo), or a directory holding other files, is left to the loaders to
refuse at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from confsync.paths import expand_user

log = logging.getLogger("confsync")

POLL = 1.0  # seconds between looks
# Once files appear, the directory is given this long without a change before it is loaded:
# config management fills it file by file (conf.d/app.toml, then its template), and the
# first file alone loaded as "no valid template resources", exit 2, never restarted.
SETTLE = 2.0
SETTLE_MAX = 30.0  # a directory that never stops changing is loaded after this all the same
# The wait is said again this often: a typo'd path to an empty directory, where no unit's
# TimeoutStartSec ends it (a container), waited for good after one line at start.
SAY_AGAIN = 300.0


def _empty(directory: Path) -> bool:
    """An existing directory with nothing in it but hidden names (`.gitkeep`)."""
    try:
        return directory.is_dir() and not any(not p.name.startswith(".")
                                              for p in directory.iterdir())
    except OSError:  # unreadable: the loader says why
        return False


def user_not_known(confdir: Path) -> str | None:
    """Why `confdir` names no directory *yet*: it is under `~user/` of a user this system does
    not know yet (kept as written: tomlvalues.late_user_path). None when it names one."""
    try:
        expand_user(confdir)
    except ValueError as exc:
        return f"confdir {confdir}: {exc}"
    return None


def not_there_yet(confdir: Path, subdir: str) -> str | None:
    """Why `confdir`'s files cannot be loaded *yet*; None when there is nothing to wait for."""
    why = user_not_known(confdir)
    if why is not None:
        return why
    if _empty(confdir):
        return f"confdir {confdir} is empty (a mount not made yet?)"
    if _empty(confdir / subdir):
        return f"{confdir / subdir} is empty (a mount not made yet, or nothing deployed yet?)"
    return None


def config_not_there_yet(path: Path) -> str | None:
    """Why the config file `path` cannot be read *yet*: it is missing from an empty directory
    (its mount not made yet). None otherwise (a wrong path is the loader's to refuse)."""
    try:
        if path.exists():
            return None
    except OSError:
        return None
    if _empty(path.parent):
        return f"config file {path} is not there and {path.parent} is empty (a mount not made yet?)"
    return None


def _fingerprint(directory: Path) -> frozenset[tuple[str, int, int]]:
    """The names, sizes and mtimes under `directory`, two levels deep (conf.d/, templates/);
    what cannot be read counts as such (the loader says why)."""
    seen = set()
    try:
        entries = list(directory.iterdir())
    except OSError:
        return frozenset()
    for entry in entries:
        try:
            for path in (entry, *(entry.iterdir() if entry.is_dir() else ())):
                info = path.lstat()
                seen.add((str(path), info.st_size, info.st_mtime_ns))
        except OSError:  # (unreadable, or gone meanwhile: the next look tells)
            seen.add((str(entry), -1, -1))
    return frozenset(seen)


def _settle(directory: Path, stop: Callable[[], bool], poll: float) -> bool:
    """Wait until nothing under `directory` changed for SETTLE (at most SETTLE_MAX); False:
    stopped meanwhile."""
    began = quiet_since = time.monotonic()
    last = _fingerprint(directory)
    while time.monotonic() - quiet_since < SETTLE and time.monotonic() - began < SETTLE_MAX:
        if stop():
            return False
        time.sleep(min(poll, SETTLE / 4))
        now = _fingerprint(directory)
        if now != last:
            last, quiet_since = now, time.monotonic()
    return True


def wait_until(why_not: Callable[[], str | None], stop: Callable[[], bool],
               poll: float = POLL, settle: Path | None = None) -> bool:
    """Return once `why_not()` is None (True), or when `stop()` came true (False). After a
    wait, once `settle` (the directory filled) has stopped changing."""
    why = why_not()
    if why is None:
        return True
    log.warning("%s: waiting for its files, starting once they are there", why)
    began = said = time.monotonic()
    while why is not None:
        if stop():
            return False
        time.sleep(poll)
        why = why_not()
        if why is not None and time.monotonic() - said >= SAY_AGAIN:
            said = time.monotonic()
            log.warning("%s: still waiting for its files (%.0fs now); is the path right?", why,
                        said - began)
    if settle is not None and not _settle(settle, stop, poll):
        return False
    log.info("the files are there now: starting")
    return True


def wait_until_filled(confdir: Path, subdir: str, stop: Callable[[], bool],
                      poll: float = POLL) -> bool:
    """`wait_until` the confdir and its `subdir` are not empty."""
    return wait_until(lambda: not_there_yet(confdir, subdir), stop, poll, settle=confdir)


__all__ = ["config_not_there_yet", "not_there_yet", "user_not_known", "wait_until",
           "wait_until_filled"]
