"""What one apply did to one resource: the record every step and every observer reads.

Apart from the sync step that makes it, so that what only reads outcomes (the exec supervisor,
the reports, the metrics) does not import the render path, and `register`, which shares the
supervisor, never loads it.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from itertools import compress, count
from operator import ne
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confsync.applier import FileState
    from confsync.errors import ResourceError
    from confsync.renderer import RenderWarning
    from confsync.resources import Resource
    from confsync.targets import ReloadResult


class Status(StrEnum):
    """What one apply did to one resource (a StrEnum: logs and metric labels use its value)."""

    UNCHANGED = "unchanged"
    UPDATED = "updated"
    FAILED = "failed"


UNCHANGED, UPDATED, FAILED = Status.UNCHANGED, Status.UPDATED, Status.FAILED


class Outcome:
    """What one apply did to one resource; the sync step fills it in as it goes.

    A plain class, not a dataclass: the one-shot path has no dataclass left, so it does not
    import `dataclasses` and `inspect` (~4 ms of `once`, issue 11)."""

    __slots__ = ("check_seconds", "content", "error", "previous", "probe", "reload",
                 "reload_seconds", "resource", "seconds", "status", "warnings")

    def __init__(self, resource: Resource, status: Status, error: ResourceError | None = None,
                 reload: ReloadResult | None = None, seconds: float = 0.0,
                 previous: FileState | None = None, content: bytes | None = None,
                 check_seconds: float | None = None, reload_seconds: float | None = None,
                 warnings: tuple[RenderWarning, ...] = (), probe: bool = False) -> None:
        self.resource = resource
        self.status = status
        self.error = error
        self.reload = reload  # what the reload step did (None: no reload ran)
        self.seconds = seconds
        self.previous = previous
        self.content = content  # what was rendered
        self.check_seconds = check_seconds
        self.reload_seconds = reload_seconds
        # Values the render left out (refused items of `gets(..., skip_invalid=True)`).
        self.warnings = warnings
        # The file was in place already, and its target is to be asked whether it runs
        # (probed, not reloaded): at its first apply in this process, and while it found
        # nothing running.
        self.probe = probe

    def __repr__(self) -> str:  # (for test failures and debugging)
        return (f"Outcome({self.resource.name!r}, {self.status.value}, error={self.error!r}, "
                f"reload={self.reload!r}, seconds={self.seconds!r})")

    @property
    def diff(self) -> str:
        """Unified diff from the previous file; computed on demand (it is costly on big files)."""
        if self.content is None:
            return ""
        old = self.previous.content if self.previous is not None else None
        return _diff(self.resource, old, self.content)

    def line_changes(self) -> tuple[int, int]:
        """(lines added, lines removed), as a multiset difference: O(n), no diff alignment."""
        if self.content is None:
            return 0, 0
        old = (self.previous.content or b"").splitlines() if self.previous else []
        return multiset_changes(old, self.content.splitlines())


def multiset_changes(old: list[bytes], new: list[bytes]) -> tuple[int, int]:
    """(lines of `new` not in `old`, lines of `old` not in `new`), counted as multisets.

    The lines both share at their start and at their end count nowhere, so only what lies
    between is counted: the comparisons run in C, where counting both 5,000-line files of a
    one-server change (two Counters and their differences, Python loops) took ~3 ms of the
    loop's thread after each write."""
    shortest = min(len(old), len(new))
    head = next(compress(count(), map(ne, old, new)), shortest)
    tail = min(next(compress(count(), map(ne, reversed(old), reversed(new))), shortest),
               shortest - head)
    old_between = Counter(old[head:len(old) - tail])
    new_between = Counter(new[head:len(new) - tail])
    return sum((new_between - old_between).values()), sum((old_between - new_between).values())


def _diff(resource: Resource, old: bytes | None, new: bytes) -> str:
    import difflib  # lazy: only `check` and diff logging need it
    old_lines = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = new.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(old_lines, new_lines, f"{resource.dest} (current)",
                                        f"{resource.dest} (rendered)"))


__all__ = ["FAILED", "UNCHANGED", "UPDATED", "Outcome", "Status"]
