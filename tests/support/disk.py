"""Filling a filesystem, for tests of a full disk."""

from __future__ import annotations

import os
from pathlib import Path


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
