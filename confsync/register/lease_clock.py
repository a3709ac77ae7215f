"""The clock `confsync register` times everything on: CLOCK_BOOTTIME, which counts a suspend.

One clock for the whole registrar (lease, keepalives, checks' silence, the loop's pauses, the
stop's deadlines), as their times are compared across modules.

etcd's lease TTL runs on etcd's clock, also while the registrar's host is suspended (a laptop
lid, a VM suspended by its hypervisor). CLOCK_MONOTONIC stops during a suspend, so a lease
timed on it looked alive after a resume for up to ttl/3 of awake time: `/ready` said 200 with
the keys gone and the keepalive that would find out not due yet. CLOCK_BOOTTIME is as immune
to wall-clock steps (NTP) as CLOCK_MONOTONIC; where it does not exist, the monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


now: Callable[[], float] = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
