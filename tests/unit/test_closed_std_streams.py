"""confsync started with stdin, stdout and stderr closed (`>&-`, a supervisor that closes them):
the numbers 0-2 must not go to the next file opened, and `once` must not fail on its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.cli import REPO, write_resource

CLOSED = 'exec "$0" "$@" <&- >&- 2>&-'  # sh: run the command with fds 0, 1 and 2 closed


def test_once_with_closed_standard_streams_succeeds(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: '8080'\n")
    dest = tmp_path / "app.conf"
    write_resource(tmp_path, "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    result = subprocess.run(["sh", "-c", CLOSED, sys.executable, "-m", "confsync", "once",
                             "--confdir", str(tmp_path), "--backend", "file", "--file",
                             str(data)], cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0  # was 1: flushing the missing sys.stdout raised
    assert dest.read_text() == "port 8080\n"


def test_closed_standard_fds_become_dev_null_for_children(tmp_path: Path) -> None:
    """Children (exec mode's HAProxy) inherit fds 1 and 2: /dev/null, not a staged file."""
    seen = tmp_path / "seen"
    probe = ("import os, sys\n"
             "from confsync.cli import _open_standard_streams\n"
             "_open_standard_streams()\n"
             "first = open(sys.argv[1], 'w')\n"  # would have taken fd 0 before
             "first.write(' '.join(os.readlink(f'/proc/self/fd/{fd}') for fd in (0, 1, 2))\n"
             "           + f' {first.fileno() > 2} {sys.stdout is not None}')\n")
    result = subprocess.run(["sh", "-c", CLOSED, sys.executable, "-c", probe, str(seen)],
                            cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0
    assert seen.read_text() == "/dev/null /dev/null /dev/null True True"
