"""Timers run on the monotonic clock: a wall clock stepped by hours (NTP, a resumed VM, a fixed
RTC) must not fire or freeze a debounce, a retry, an interval, a lease or a health check.
Wall time is only for exported timestamps, log lines and the `datetime()` template function,
and for a line that says why with a `# wall clock: <reason>` comment."""

from __future__ import annotations

import re
from pathlib import Path

import confsync

# module -> why it may read the wall clock
WALL_CLOCK_ALLOWED = {
    "ops/metrics.py": "exported timestamps (last success, heartbeat)",
    "register/metrics.py": "the exported heartbeat timestamp",
    "confd_funcs.py": "datetime(), the template function",
}
WALL_CLOCK = re.compile(r"\btime\.time\b|\bdatetime\.(now|utcnow|today)\b|\bdate\.today\b")


def test_only_timestamps_read_the_wall_clock() -> None:
    root = Path(confsync.__file__).parent
    offenders = sorted(
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in root.rglob("*.py")
        if str(path.relative_to(root)) not in WALL_CLOCK_ALLOWED
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if WALL_CLOCK.search(line.split("#", 1)[0]) and "# wall clock: " not in line)
    assert not offenders, "use time.monotonic() for timers:\n" + "\n".join(offenders)


def test_leases_are_timed_on_a_clock_that_counts_a_suspend() -> None:
    """etcd's lease TTL runs on through a suspend of the registrar's host; CLOCK_MONOTONIC does
    not, so a lease timed on it looked alive after a resume (/ready 200, keys gone) until the
    next keepalive came due. The registrar and its /ready time leases on CLOCK_BOOTTIME."""
    import time

    from confsync.register import lease_clock
    from confsync.register.metrics import RegisterMetrics

    root = Path(confsync.__file__).parent / "register"
    for path in root.glob("*.py"):  # one clock: times are compared across its modules
        if path.name == "lease_clock.py":  # (where there is no CLOCK_BOOTTIME)
            continue
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert "time.monotonic" not in code, f"register/{path.name} times on CLOCK_MONOTONIC"
    if hasattr(time, "CLOCK_BOOTTIME"):
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert boot <= lease_clock.now() <= time.clock_gettime(time.CLOCK_BOOTTIME)
    assert RegisterMetrics([])._clock is lease_clock.now
