"""What one apply did to one resource: the record every step and every observer reads.

Apart from the sync step that makes it, so that what only reads outcomes (the exec supervisor,
the reports, the metrics) does not import the render path, and `register`, which shares the
supervisor, never loads it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
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


@dataclass
class Outcome:
    resource: Resource
    status: Status
    error: ResourceError | None = None
    reload: ReloadResult | None = None  # what the reload step did (None: no reload ran)
    seconds: float = 0.0
    previous: FileState | None = field(default=None, repr=False)
    content: bytes | None = field(default=None, repr=False)  # what was rendered
    check_seconds: float | None = None
    reload_seconds: float | None = None
    # Values the render left out (refused items of `gets(..., skip_invalid=True)`).
    warnings: tuple[RenderWarning, ...] = ()
    # The file was in place already, and its target is to be asked whether it runs (probed,
    # not reloaded): at its first apply in this process, and while it found nothing running.
    probe: bool = field(default=False, repr=False)

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
        old = Counter((self.previous.content or b"").splitlines()) if self.previous else Counter()
        new = Counter(self.content.splitlines())
        return sum((new - old).values()), sum((old - new).values())


def _diff(resource: Resource, old: bytes | None, new: bytes) -> str:
    import difflib  # lazy: only `check` and diff logging need it
    old_lines = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = new.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(old_lines, new_lines, f"{resource.dest} (current)",
                                        f"{resource.dest} (rendered)"))


__all__ = ["FAILED", "UNCHANGED", "UPDATED", "Outcome", "Status"]
