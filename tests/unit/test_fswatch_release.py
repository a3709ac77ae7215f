"""An observer stopped early gives its inotify instance back.

watchdog's inotify reader, stopped before its thread first read, ended without closing its
descriptors: the file backend's retries while its data directory was gone, and watchers
stopped right after their start, leaked an inotify instance and a pipe each, until the user's
128 instances ran out. Real watchdog, real inotify, descriptors counted in /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from watchdog.events import FileSystemEventHandler

from confsync.fswatch import start_observer
from confsync.stores.file import FileStore

ROUNDS = 100


def descriptors() -> list[str]:
    fds = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            fds.append(os.readlink(fd))
    return sorted(fds)


def inotify_or_pipe(fds: list[str]) -> int:
    return sum(1 for fd in fds if fd == "anon_inode:inotify" or fd.startswith("pipe:"))


def test_a_start_on_a_missing_directory_leaves_no_descriptor(tmp_path: Path) -> None:
    before = inotify_or_pipe(descriptors())
    for _ in range(ROUNDS):
        with pytest.raises(FileNotFoundError):
            start_observer(FileSystemEventHandler(), [str(tmp_path / "gone")],
                           recursive=False, what="test")
    assert inotify_or_pipe(descriptors()) == before


def test_the_file_backend_retrying_a_deleted_data_directory_leaves_no_descriptor(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / "data.yaml"
    data.write_text("k: 1\n")
    store = FileStore([data])
    before = inotify_or_pipe(descriptors())
    for _ in range(ROUNDS // 4):
        handle = store.watch(["/k"], 0, lambda _event: None)
        handle.cancel()
        handle.cancel()  # a second stop closes nothing twice
    data.unlink()
    data_dir.rmdir()
    for _ in range(ROUNDS):  # the follower's retries while the directory is gone
        with pytest.raises(Exception, match="cannot watch"):
            store.watch(["/k"], 0, lambda _event: None)
    assert inotify_or_pipe(descriptors()) == before
