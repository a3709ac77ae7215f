"""running_copy: the file a service runs, kept beside dest while its reload is owed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confsync.running_copy import keep_running, read_kept, reloaded, running_copy


def test_the_replaced_file_is_kept_as_a_link_and_an_older_copy_wins(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_text("one\n")
    assert keep_running(dest) is True
    copy = running_copy(dest)
    assert copy.name == ".app.conf.confsync-running"
    assert os.stat(copy).st_ino == os.stat(dest).st_ino  # a link, no copy of the bytes
    dest.unlink()
    dest.write_text("two\n")  # installed; its reload failed; a third file comes
    assert keep_running(dest) is False  # the service still runs "one"
    found = read_kept(dest)
    assert found is not None and found[0] == b"one\n"
    reloaded(dest)
    assert not copy.exists() and read_kept(dest) is None
    reloaded(dest)  # nothing kept: no error


def test_no_file_before_keeps_an_empty_marker(tmp_path: Path) -> None:
    dest = tmp_path / "new.conf"
    assert keep_running(dest) is True
    found = read_kept(dest)
    assert found is not None and found[0] == b""  # owed; what ran is unknown


def test_a_planted_link_or_someone_elses_file_is_not_taken_for_ours(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not yours\n")
    dest = tmp_path / "app.conf"
    running_copy(dest).symlink_to(secret)
    assert read_kept(dest) is None
    running_copy(dest).unlink()
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file of another user")
    running_copy(dest).write_text("planted\n")
    os.chown(running_copy(dest), 65534, 65534)
    assert read_kept(dest) is None
