"""Hostile input found by fuzzing every input surface: each one used to end in a traceback, a
hang, or a setting that failed far from where it was written. Now each is a clear error that
names the file and key, and the other resources go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.durations import parse_duration
from confsync.errors import ConfigError
from confsync.settings import load_settings

# -- durations, numbers (confsync.toml, CONFSYNC_*, resource files) -------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "inf", "1e400", 1e10,
                                 10**400, "99999999999999h", "8761h"])
def test_durations_that_no_clock_can_wait_are_refused(bad: object) -> None:
    # Before: accepted; `watch.interval = 1e10` was an OverflowError in the loop at every tick
    # (exit 70 after five), `wait_min = nan` never applied a change, 10**400 an OverflowError.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_a_year_is_still_a_duration() -> None:
    assert parse_duration("8760h") == 365 * 24 * 3600.0


@pytest.mark.parametrize("line", ["interval = 1e10", "wait_min = nan", 'wait_max = "inf"'])
def test_huge_or_nan_watch_durations_name_the_file_and_key(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f"[watch]\n{line}\n")
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"confsync\.toml: watch\.{key}: .*duration"):
        load_settings({"config": str(cfg)}, {})


@pytest.mark.parametrize("value", ["inf", "-inf", "2.5"])
def test_crash_limit_that_is_no_whole_number_is_refused(tmp_path: Path, value: str) -> None:
    # Before: inf was an OverflowError traceback, 2.5 silently became 2.
    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f"[exec]\ncrash_limit = {value}\n")
    with pytest.raises(ConfigError, match=r"exec\.crash_limit: expected a whole number"):
        load_settings({"config": str(cfg)}, {})
