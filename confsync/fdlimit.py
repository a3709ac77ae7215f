"""The open-file limit (RLIMIT_NOFILE): raised to its hard limit by the daemons, and named in
every "Too many open files" error.

Service managers and shells often start a process with a low soft limit (1024 under systemd,
sometimes 64 or 256 in containers and old init scripts) and a much higher hard one. `register`
runs every check on a thread of its own, each a socket or a child with its output file: 100
registrations with a tcp and an exec check under a soft limit of 64 failed their checks with
"Too many open files" (instances flapped out of the pool) and the etcd connection with them
(the lease at risk), while the hard limit allowed thousands. A process may raise its own soft
limit up to the hard one, as Go programs (consul-template, confd) do at start. Children
(checks, reloads, exec mode's service) inherit the raised limit, as they would a unit's
LimitNOFILE=.
"""

from __future__ import annotations

import errno


def raise_soft_limit() -> tuple[int, int] | None:
    """Set the soft open-file limit to the hard one; (old, new) when it changed, else None."""
    import resource  # (lazy, as in describe: a one-shot run never needs it)

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # (An unlimited hard limit is left alone: no soft limit above fs.nr_open is taken.)
        if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return soft, hard
    except (OSError, ValueError):
        pass  # not allowed (a seccomp filter): the limit stays, and EMFILE errors name it
    return None


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
