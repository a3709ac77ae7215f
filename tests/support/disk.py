"""Filesystems for tests of the dest's own faults: filling one, freezing one."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def fill(path: Path) -> None:
    """Write `path` until its filesystem is full (unbuffered: nothing left to flush at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def loop_ext4(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """A small ext4 image of the test's own loop-mounted at `path` (one fsfreeze may freeze:
    tmpfs may not support it); thawed and unmounted after, whatever happened. Skips without
    root."""
    image = path.with_name(path.name + ".img")
    path.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(path)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"cannot make and loop-mount an ext4 image (needs root): {made.stderr}")
    try:
        yield path
    finally:
        thaw(path)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        image.unlink(missing_ok=True)


def freeze(path: Path) -> None:
    """fsfreeze -f: every write to the filesystem at `path` blocks until `thaw`."""
    subprocess.run(["fsfreeze", "-f", str(path)], check=True, timeout=10)


def thaw(path: Path) -> None:
    """fsfreeze -u (harmless on a filesystem that is not frozen)."""
    subprocess.run(["fsfreeze", "-u", str(path)], capture_output=True, timeout=10)
