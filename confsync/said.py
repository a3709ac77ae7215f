"""How a failure logged now is said, and what two failures share to be one.

What the watch loop's bookkeeping (repeated_failures.py) hands the report (ops/report.py),
kept apart from it: `once` and the sync step import this and not that (its four dataclasses
were ~0.5 ms of a one-shot run, issue 11).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A staged file's pid and attempt number (applier._staged_name: `.haproxy.cfg.812.37.confsync`).
# (patterns compiled at first use, by re's cache: a run where nothing fails never compiles them)
_STAGED = r"\.[0-9]+\.[0-9]+(?=\.confsync\b)"
# A number standing alone, with a unit perhaps (`pid 812`, `(812)`, `#3`, `12.5s`, `exited 1`),
# not one inside a name, path or address (`server-2`, `/pool/2`, `10.0.0.2`, `host:8080`).
_ALONE = r"(?<![\w./:@-])[0-9]+(?:\.[0-9]+)?(?:ms|s)?(?![\w/:@-]|\.[0-9A-Za-z])"


def shape(reason: str) -> str:
    """`reason` with its noise blanked: what two tries' messages must share to be one."""
    return re.sub(_ALONE, "#", re.sub(_STAGED, ".#.#", reason))


class Said(NamedTuple):
    """How a failure that is logged now is said (`failed`'s answer, `report`'s argument).
    (A NamedTuple, not a dataclass: one `exec` to create, not six.)"""

    unsaid: int = 0  # failures like it that were not logged since it last was
    before: str = ""  # the cause it replaces, when that one failed again unlogged ...
    before_unsaid: int = 0  # ... this many times (else it was lost with the change of cause)
    # Failing intermittently (more than FLAPS switches to failing within `every`): failures
    # and recoveries in the last `over` seconds, said as one summary.
    failures: int = 0
    recoveries: int = 0
    over: float = 0.0


FIRST = Said()  # a failure said as it is: the first of its kind


__all__ = ["FIRST", "Said", "shape"]
