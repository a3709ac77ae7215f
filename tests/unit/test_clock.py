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
