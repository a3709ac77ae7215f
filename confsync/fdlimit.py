"""The open-file limit (RLIMIT_NOFILE): raised to its hard limit by the daemons, and named in
every "Too many open files" error.

Service managers and shells often start a process with a low soft limit (1024 under systemd,
sometimes 64 or 256 in containers and old init scripts) and a much higher hard one. `register`
runs every check on a thread of its own, each a socket or a child with its output file: 100
registrations with a tcp and an exec check under a soft limit of 64 failed their checks with
"Too many open files" (instances flapped out of the pool) and the etcd connection with them
(the lease at risk), while the hard limit allowed thousands. A process may raise its own soft
limit up to the hard one, as Go programs (consul-template, confd) do at start.

The exec-mode service (`watch --exec`, `register --exec`) gets the soft limit confsync was
started with: inherited, the raised one (524288 under systemd's default 1024:524288) broke
services that select() on descriptors past FD_SETSIZE (1024) or that size per-descriptor
tables, or close every descriptor, up to the soft limit. Checks and reloads inherit the raised
one (children.start says why).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import suppress

# The soft limit confsync was started with, while raise_soft_limit() has it raised; else None.
_started_with: int | None = None


def raise_soft_limit() -> tuple[int, int] | None:
    """Set the soft open-file limit to the hard one; (old, new) when it changed, else None."""
    import resource  # (lazy, as in describe: a one-shot run never needs it)

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # (An unlimited hard limit is left alone: no soft limit above fs.nr_open is taken.)
        if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            global _started_with
            _started_with = soft
            return soft, hard
    except (OSError, ValueError):
        pass  # not allowed (a seccomp filter): the limit stays, and EMFILE errors name it
    return None


def for_children() -> Callable[[], None] | None:
    """A `preexec_fn` giving a child the soft limit confsync was started with; None when it
    was not raised (nothing to undo: the child is started the cheap way, by vfork).

    The limit is per process, shared by every thread, so it cannot be lowered around a spawn
    in the parent: a check thread opening its socket then would fail with EMFILE. Python's
    subprocess has no rlimit option, and a shim (`prlimit`, `sh -c 'ulimit'`) would stand in
    for the command's own "cannot run" errors. The cost is a fork in place of a vfork:
    measured 1-2 ms more per command at 45 MB of RSS, 10-15 ms at 200 MB.
    """
    soft = _started_with
    if soft is None:
        return None
    import resource

    limit = (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    setrlimit, nofile = resource.setrlimit, resource.RLIMIT_NOFILE

    def restore() -> None:  # (in the child between fork and exec: no locks, no logging)
        with suppress(OSError, ValueError):  # (the raised limit stays: better than no child)
            setrlimit(nofile, limit)

    return restore


def exhausted(exc: BaseException) -> bool:
    """The error is one of running out of file descriptors (the process's or the system's)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


def describe(exc: OSError) -> str:
    """`exc.strerror`, with the open-file limit when it is EMFILE (or ENFILE, the system's)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EMFILE:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"{reason} (confsync's open-file limit, RLIMIT_NOFILE, is {soft}"
                + (f", hard limit {hard}" if hard != soft else "") + ")")
    if exc.errno == errno.ENFILE:
        return f"{reason} (the system's limit, fs.file-max, is reached)"
    return reason
