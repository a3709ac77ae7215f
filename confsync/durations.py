"""Parse operator-friendly durations ("250ms", "2s", "1m30s") into seconds."""

from __future__ import annotations

import math
import re

# The longest duration accepted: a year. Far above any sensible timeout or interval, and far
# below what the clocks and waits take (threading's waits overflow above ~292 years, 1e10 s).
MAX_DURATION = 365 * 24 * 3600.0

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h)"  # (compiled at first use, by re's cache: issue 11)


def parse_duration(value: object) -> float:
    """Return seconds. Bare numbers are seconds; strings take Go-style unit suffixes.

    Raises ValueError with a message that says what was expected. NaN, infinity and anything
    above MAX_DURATION are refused: a wait of that long overflows the clock (or, NaN, is never
    over), so it would fail where it is used, far from the setting.
    """
    seconds = _parse(value)
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"expected a duration of at most 8760h (a year), found {value!r}")
    return seconds


def _parse(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms' or '2s', found {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        return float(value) if value <= MAX_DURATION else math.inf  # 10**400: no float
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '250ms' or '2s', found {value!r}")
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        return seconds
    pos = 0
    total = 0.0
    for match in re.finditer(_PART, text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"expected a duration such as '250ms', '2s' or '1m30s', found {value!r}"
        )
    return total
