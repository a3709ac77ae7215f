"""Render limits: a deadline that stops a runaway template, and a cap on its output size.

The deadline must stop a plain `{% for i in range(10**12) %}` too, which no cooperative check in
confsync's own functions would see. A single watchdog thread raises `RenderTimeout` *inside* the
rendering thread (CPython's `PyThreadState_SetAsyncExc`) once the deadline passes; it lands at
the next bytecode boundary, so any Python-level loop stops. The happy path costs one lock round
trip per render: the watchdog sleeps until the earliest deadline and is woken only when a new
deadline is earlier than the one it sleeps towards. A template stuck inside one long C call (a
catastrophic regex, `"x" * 10**10`) is not interrupted: templates are trusted like code.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import threading
import time
from collections.abc import Iterator

DEFAULT_RENDER_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT_SIZE = 64 * 1024 * 1024

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
_set_async_exc.restype = ctypes.c_int


class RenderTimeout(BaseException):
    """Raised into a render that overran its deadline.

    A BaseException, so that no `except Exception` in a filter or in Jinja swallows it.
    """


class OutputTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"rendered output exceeds max_output_size ({format_size(limit)}); "
                         f"stopped rendering")


class Deadline:
    """Arm before a render, disarm after; `RenderTimeout` is raised into the armed thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._thread_id = 0
        self._due = 0.0  # 0: disarmed
        self._fired = False
        self._sleeping_until = float("inf")
        self._watchdog: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._thread_id = threading.get_ident()
            self._due = time.monotonic() + seconds
            self._fired = False
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="confsync-render-deadline")
                self._watchdog.start()
            elif self._due < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> bool:
        """True when the deadline fired; a timeout not yet delivered is cancelled."""
        with self._cond:
            fired = self._fired
            if fired:
                _set_async_exc(self._thread_id, None)
            self._due = 0.0
            self._fired = False
            return fired

    def _watch(self) -> None:
        with self._cond:
            while True:
                due = self._due
                now = time.monotonic()
                if not due or self._fired:
                    self._sleeping_until = float("inf")
                    self._cond.wait()
                elif now < due:
                    self._sleeping_until = due
                    self._cond.wait(due - now)
                else:
                    self._fired = True
                    _set_async_exc(self._thread_id, id(RenderTimeout))


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
