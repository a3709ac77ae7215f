"""`confsync convert --check`: render the converted confdir against a data file and compare.

The other side is confd itself: run `confd -onetime -backend file -file DATA` (same data file)
into a directory and pass it as `--expect DIR`; files there are matched by each resource's dest
file name. Without `--expect`, --check proves that every converted template renders.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import TextIO

from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import load_resources
from confsync.stores import Snapshot
from confsync.stores.file import read_data_file


def check_conversion(confdir: Path, data: Path, expect: Path | None, out: TextIO) -> int:
    """0 when every template rendered (and matched its expected file), else 1."""
    prefix = ""
    main = confdir / "confsync.toml"
    if main.is_file():
        prefix = str(tomllib.loads(main.read_text("utf-8")).get("prefix", ""))
    loaded = load_resources(confdir, prefix)
    failures = len(loaded.errors)
    for error in loaded.errors:
        out.write(f"error: {error}\n")
    mirror = Mirror()
    mirror.load(Snapshot(1, read_data_file(data)))
    renderer = Renderer(confdir / "templates")
    for resource in loaded.resources:
        try:
            text = renderer.render(resource, mirror)
        except ResourceError as exc:
            out.write(f"FAIL {resource.name}: {exc.reason}\n")
            failures += 1
            continue
        if expect is None:
            out.write(f"ok   {resource.name}: renders ({len(text.encode())} bytes)\n")
            continue
        expected_path = expect / resource.dest.name
        try:
            # bytes as confd wrote them: read_text's newline translation made a CRLF file
            # equal to ours in LF (and a file that is not UTF-8 raised)
            expected_bytes = expected_path.read_bytes()
        except OSError as exc:
            out.write(f"FAIL {resource.name}: no expected file {expected_path}: {exc.strerror}\n")
            failures += 1
            continue
        expected = expected_bytes.decode("utf-8", errors="backslashreplace")
        if expected_bytes == text.encode():
            out.write(f"same {resource.name}: byte-identical to {expected_path}\n")
            continue
        failures += 1
        out.write(f"DIFF {resource.name}:\n")
        out.writelines(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=str(expected_path), tofile=f"{resource.name} (confsync)"))
    return 0 if failures == 0 else 1
