"""The start's wait for an empty confdir says so while it lasts, not once (confdir_wait.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from confsync import confdir_wait


def test_a_wait_that_lasts_is_said_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A typo'd path to an empty directory, with no unit timeout to end the wait (a
    container), waited for good after one WARNING at start."""
    monkeypatch.setattr(confdir_wait, "SAY_AGAIN", 0.2, raising=False)
    (tmp_path / "cd").mkdir()
    ends = time.monotonic() + 1.0
    with caplog.at_level(logging.WARNING, logger="confsync"):
        assert not confdir_wait.wait_until_filled(
            tmp_path / "cd", "conf.d", lambda: time.monotonic() > ends, poll=0.05)
    said = [r.getMessage() for r in caplog.records if "is empty" in r.getMessage()]
    assert len(said) >= 3, said
    assert "still waiting" in said[-1], said
