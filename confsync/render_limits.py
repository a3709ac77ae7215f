"""Render limits: a deadline that stops a runaway template, and a cap on its output size.

The deadline must stop a plain `{% for i in range(10**12) %}` too, which no cooperative check in
confsync's own functions would see. A single watchdog thread raises `RenderTimeout` *inside* the
rendering thread (CPython's `PyThreadState_SetAsyncExc`) once the deadline passes; it lands at
the next bytecode boundary, so any Python-level loop stops. The happy path costs one lock round
trip per render: the watchdog sleeps until the earliest deadline (idle, for _IDLE_WAKE) and is
woken only when a new deadline is earlier than its next wake, so a render with the default 30 s
never wakes it. A template stuck inside one long C call (a catastrophic regex,
`"x" * 10**10`) is not interrupted: templates are trusted like code.

The deadline counts the time the process runs: while a render is armed the watchdog wakes every
quarter second, and a wake-up much later than asked for (the process was stopped: SIGSTOP, a
paused VM) moves every armed deadline on by that much, instead of stopping on SIGCONT a render
that had used little of its time.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

DEFAULT_RENDER_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT_SIZE = 64 * 1024 * 1024
# While a render is armed the watchdog wakes at least this often, so that a stop of the whole
# process (SIGSTOP, a VM paused for live migration, a debugger) shows as a wake-up later than
# asked for by more than _LATE: the monotonic clock ran on meanwhile, the render did not, and
# that time is not counted against it.
_TICK = 0.25
_LATE = 0.5
# With nothing armed the watchdog wakes this often instead of sleeping until an `arm` wakes
# it: an arm due after its next wake leaves it asleep. Woken by every render, it took the
# GIL just as the render handed the file to its worker (~30-50 us of a watch's put -> file
# of a small template, ~2.5 ms); a wake every few seconds of an idle process costs nothing.
_IDLE_WAKE = 5.0

def _set_async_exc(thread_id: int, exc_class: int | None) -> None:
    """Raise the class whose id is `exc_class` in thread `thread_id` (None: cancel it).

    ctypes is imported here, when a deadline fires: about 3 ms that `once` need not pay.
    """
    import ctypes

    function = ctypes.pythonapi.PyThreadState_SetAsyncExc
    function.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
    function.restype = ctypes.c_int
    function(thread_id, exc_class)


class RenderTimeout(BaseException):
    """Raised into a render that overran its deadline.

    A BaseException, so that no `except Exception` in a filter or in Jinja swallows it.
    """


class OutputTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"rendered output exceeds max_output_size ({format_size(limit)}); "
                         f"stopped rendering")


class Deadline:
    """Arm before a render, disarm after; `RenderTimeout` is raised into the armed thread,
    from the moment `arm` has armed it (arm inside the `try` that handles it) until `disarm`
    returns.

    One per process (`DEADLINE`), one watchdog thread for all renderers and threads.
    """

    def __init__(self) -> None:
        # A plain lock, which `with` takes and releases in C. The rendering thread took a
        # Condition's (an RLock behind Python's __enter__): a RenderTimeout fired as a render
        # ended (its disarm waiting for the lock while the watchdog held it to fire) landed
        # in that __enter__ after the lock was taken, which was then never released, and no
        # deadline of the process fired again. Only the watchdog, which no RenderTimeout
        # reaches, uses the Condition's Python code (`wait`); `notify` runs under the lock,
        # where nothing can fire.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._armed: dict[int, list[Any]] = {}  # thread id -> [due, fired]
        self._sleeping_until = float("inf")
        self._watchdog: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        due = time.monotonic() + seconds
        with self._lock:
            self._armed[threading.get_ident()] = [due, False]
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="confsync-render-deadline")
                self._watchdog.start()
            elif due < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> bool:
        """True when the deadline fired; a timeout not yet delivered is cancelled."""
        thread_id = threading.get_ident()
        with self._lock:
            entry = self._armed.pop(thread_id, None)
            if entry is not None and entry[1]:
                _set_async_exc(thread_id, None)
                return True
            return False

    def _watch(self) -> None:
        with self._cond:
            wake_at: float | None = None  # when the last wait was to end
            while True:
                now = time.monotonic()
                if wake_at is not None and now - wake_at > _LATE:
                    # The process was stopped: without this, every armed render would be
                    # stopped on SIGCONT however little of its time it had used.
                    for entry in self._armed.values():
                        entry[0] += now - wake_at
                next_due = float("inf")
                for thread_id, entry in self._armed.items():
                    due, fired = entry
                    if fired:
                        continue
                    if due <= now:
                        entry[1] = True
                        _set_async_exc(thread_id, id(RenderTimeout))
                    else:
                        next_due = min(next_due, due)
                wake_at = now + _IDLE_WAKE if next_due == float("inf") else min(next_due,
                                                                                 now + _TICK)
                self._sleeping_until = wake_at  # (an arm due earlier wakes it: `arm`)
                self._cond.wait(wake_at - now)


DEADLINE = Deadline()


def join_capped(chunks: Iterator[str], limit: int) -> str:
    """Join a template's output chunks, stopping once more than `limit` characters came out.

    Chunks are joined in C in batches, so the check costs next to nothing per chunk.
    """
    parts: list[str] = []
    size = 0
    while batch := list(itertools.islice(chunks, 4096)):
        part = "".join(batch)
        size += len(part)
        if size > limit:
            raise OutputTooLarge(limit)
        parts.append(part)
    return "".join(parts)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: object) -> int:
    """A size in bytes: a whole number, or a string like "64MiB", "500kB", "1G"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _UNITS or int(match.group(1)) <= 0:
        raise ValueError(f"expected a size such as 65536, \"64MiB\" or \"500kB\", found {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
