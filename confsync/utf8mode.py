"""Run in Python's UTF-8 mode whatever the locale: re-execute the interpreter with `-X utf8`.

confsync's files, paths and commands are UTF-8 (TOML and templates are UTF-8 by definition,
etcd values are decoded as UTF-8). Under a locale that is not UTF-8 (`LANG=en_US.ISO-8859-1`
from a cron job or an old host's /etc/default/locale), Python encodes every str path and
command argument with the locale's codec: a dest named `café.conf` was created under another
name (latin-1 bytes), a `check_cmd` argument `café` reached the command as another string,
and a character latin-1 has not (`☃`) failed the stage with UnicodeEncodeError. Only the
interpreter's start decides this (PEP 540), so a non-UTF-8 locale re-executes it once, in
UTF-8 mode; `-X` is not inherited, so children (checks, reloads, exec mode's service) still
get the locale they were given. (C and POSIX locales already start in UTF-8 mode.)
"""

from __future__ import annotations

import os
import signal
import sys

# -X options of the re-executed interpreter: UTF-8 mode, and "re-executed; these signals were
# blocked for the exec" (REEXEC_MARK=1,15: see unblock_after_reexec).
REEXEC_MARK = "confsync_reexec"
_BLOCKED = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def needs_reexec() -> bool:
    """True when this interpreter encodes paths or opens text with a codec other than UTF-8."""
    if sys.flags.utf8_mode or REEXEC_MARK in sys._xoptions:
        return False  # (the mark: never a second exec, whatever the first one gave)
    # On Linux the filesystem encoding is the locale's codeset, which open() defaults to too
    # (read without importing `locale`: 1.5 ms of a one-shot run).
    return sys.getfilesystemencoding().lower().replace("_", "-") not in ("utf-8", "utf8")


def reexec_in_utf8_mode() -> None:
    """Replace this process (same pid, arguments, environment and fds) by one in UTF-8 mode.

    SIGHUP, SIGTERM, SIGUSR1 and SIGUSR2 are blocked across the exec (their default action
    would end the process): the new interpreter holds them (held_signals) before it unblocks
    them, so one sent meanwhile is pending, not lost. Returns only when the exec fails (the
    interpreter gone in an upgrade): the run goes on in the locale's encoding, with a warning.
    """
    if not sys.executable:
        return  # (an embedded interpreter: nothing to execute)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    blocked = ",".join(str(int(s)) for s in _BLOCKED if s not in old)  # (not those given so)
    argv = [sys.executable, "-X", "utf8", "-X", f"{REEXEC_MARK}={blocked}",
            *sys.orig_argv[1:]]
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if sys.stderr is not None:
            sys.stderr.write(f"confsync: WARNING: the locale's encoding is "
                             f"{sys.getfilesystemencoding()}, not UTF-8, and re-executing "
                             f"{sys.executable} in UTF-8 mode failed ({exc.strerror}); non-ASCII "
                             f"paths and command arguments follow the locale (set PYTHONUTF8=1)\n")


def unblock_after_reexec() -> None:
    """Unblock what reexec_in_utf8_mode blocked, in every command (children inherit the mask:
    a check_cmd with SIGTERM blocked could not be stopped); a daemon calls it once the signals
    are held, so one sent during the exec is delivered to held_signals now."""
    blocked = sys._xoptions.get(REEXEC_MARK)
    if isinstance(blocked, str) and blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {int(s) for s in blocked.split(",")})
