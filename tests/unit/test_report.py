"""The per-resource log event: its line counts are there when it is logged, and cost nothing
when it is not (a `once --log-level error` of 5,000 lines spent ~2 ms counting them)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import pytest

from confsync.applier import FileState
from confsync.ops.report import report
from confsync.outcome import UPDATED, Outcome, multiset_changes
from confsync.resources import Resource


def _written() -> Outcome:
    resource = Resource(name="r", source=Path("/x/r.toml"), src=Path("/x/t"),
                        dest=Path("/x/r.conf"), keys=("/a",), prefix="")
    return Outcome(resource, UPDATED, previous=FileState(b"a\nb\nb\n"), content=b"b\nc\nd\n")


def test_a_logged_write_carries_its_line_counts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="confsync"):
        report(_written(), 7)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("resource r: wrote")]
    assert (record.lines_added, record.lines_removed) == (2, 2)  # type: ignore[attr-defined]


def test_an_unlogged_write_counts_no_lines(caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def counted(self: Outcome) -> tuple[int, int]:
        raise AssertionError("lines counted for an event nobody logs")

    monkeypatch.setattr(Outcome, "line_changes", counted)
    with caplog.at_level(logging.ERROR, logger="confsync"):
        report(_written(), 7)
    assert caplog.records == []


def test_lines_shared_at_the_start_and_end_count_as_in_a_count_of_every_line() -> None:
    """Counting only what lies between the lines both files share at their start and end
    gives what two Counters of every line give: files with repeated lines, overlapping
    shared parts (a line dropped from a run of equal ones), empty files, reorders."""
    rng = random.Random(5)
    for _ in range(3000):
        old = [bytes([rng.choice(b"abcd")]) for _ in range(rng.randrange(12))]
        new = list(old)
        for _ in range(rng.randrange(4)):
            roll = rng.random()
            if roll < 0.3 and new:
                del new[rng.randrange(len(new))]
            elif roll < 0.6:
                new.insert(rng.randrange(len(new) + 1), bytes([rng.choice(b"abcde")]))
            elif new:
                new[rng.randrange(len(new))] = bytes([rng.choice(b"abcde")])
        if rng.random() < 0.1:
            rng.shuffle(new)
        both = Counter(old), Counter(new)
        assert multiset_changes(old, new) == (sum((both[1] - both[0]).values()),
                                              sum((both[0] - both[1]).values())), (old, new)
