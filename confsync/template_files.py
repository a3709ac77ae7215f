"""The template files of a confdir, read in one pass.

Its own module: the Renderer reads them when it is made, and `once`'s render memo digests them
without importing the render path (Jinja2 and the template functions).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class TemplateSources(NamedTuple):
    """The template files a render can load, read at one time: `once`'s render memo digests
    these very bytes and its Renderer renders them (read twice, a deploy between the two reads
    left the memo saying the old templates had written the new ones' output)."""

    files: dict[str, bytes | OSError]  # the templates directory's, by template name
    explicit: dict[Path, bytes | OSError]  # each `src` outside it, by its path

    @classmethod
    def read(cls, directory: Path, explicit: Iterable[Path]) -> TemplateSources:
        found: dict[Path, bytes | OSError] = {}
        for path in sorted(set(explicit)):
            try:
                found[path] = path.read_bytes()
            except OSError as exc:
                found[path] = exc
        return cls(read_templates(directory), found)


def read_templates(directory: Path) -> dict[str, bytes | OSError]:
    """Every file under `directory` (following links to directories, each directory once), by
    its template name ('sub/x.tmpl'): the bytes, or why they could not be read.

    Read when a Renderer is made, so that one resource set renders the templates as they were
    when it was loaded: an `{% include %}` that a render had not needed yet used to be read
    from disk at its first use, and so could be an edit waiting for its SIGHUP, or one that a
    SIGHUP had refused as broken, beside a main template of the running set.
    """
    files: dict[str, bytes | OSError] = {}
    seen: set[str] = set()
    for root, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        relative = Path(root).relative_to(directory)
        for name in names:
            path = Path(root) / name
            try:
                if not stat.S_ISREG(path.stat().st_mode):
                    continue  # a FIFO would block the read; a device is no template
                data: bytes | OSError = path.read_bytes()
            except FileNotFoundError:
                continue  # a dangling link, or gone meanwhile
            except OSError as exc:
                data = exc
            files[(relative / name).as_posix()] = data
    return files
