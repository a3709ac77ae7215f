"""Which version of a file is on disk now, for material read once and kept (TLS certificates,
CA bundles) that operators renew in place: keep what was built while this stays the same."""

from __future__ import annotations

from pathlib import Path

FileVersion = tuple[int, int, int]


def file_version(path: Path | None) -> FileVersion | None:
    """(inode, size, mtime) of `path`: a rewrite, or a rename over it, changes the answer.
    None when no path is given or it cannot be read (whoever reads it says why)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
