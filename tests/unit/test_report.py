"""The per-resource log event: its line counts are there when it is logged, and cost nothing
when it is not (a `once --log-level error` of 5,000 lines spent ~2 ms counting them)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from confsync.applier import FileState
from confsync.ops.report import report
from confsync.outcome import UPDATED, Outcome
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
