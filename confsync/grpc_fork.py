"""gRPC's fork support off in confsync's own process, as it was for the processes it starts.

`GRPC_ENABLE_FORK_SUPPORT=1` (set image-wide for Python services that fork with gRPC, as
Google's client libraries advise) makes gRPC run fork handlers around every fork() of the
process. confsync forks only to exec: a check or a reload by vfork (no handlers run), the
`--exec` service by fork when its open-file limit is restored (fdlimit.for_children). With
gRPC's watch and keepalive threads alive that fork hung in the child before its exec, and
subprocess waits for the exec: the loop stopped for good, SIGTERM unheeded (within 1-6 child
restarts here). confsync never uses gRPC in a child, so its own process runs without fork
support; the processes it starts get the variable as confsync was given it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

VARIABLE = "GRPC_ENABLE_FORK_SUPPORT"
OFF = "0"
_given: str | None = None  # the value confsync was started with, when it changed it


def turn_off() -> None:
    """Before gRPC is imported (it reads the variable then, and at its first channel)."""
    global _given
    value = os.environ.get(VARIABLE)
    if value is not None and value != OFF:
        _given = value
        os.environ[VARIABLE] = OFF


def child_env(env: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """`env` for a child (None: confsync's own), with the variable as confsync was given it."""
    if _given is None:
        return env
    child = dict(os.environ if env is None else env)
    if child.get(VARIABLE) == OFF:  # (ours; a value set for the child on purpose is kept)
        child[VARIABLE] = _given
    return child
