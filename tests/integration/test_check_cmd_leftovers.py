"""What a `check_cmd` leaves running in its process group goes at its exit."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.support.cli import confsync, write_resource
from tests.support.daemon import running, wait_for


def test_what_a_check_cmd_leaves_in_its_group_is_killed_at_its_exit(tmp_path: Path) -> None:
    """A check that starts a helper in the background and exits (`sh -c "probe & ..."`) left it
    running at every render, for good: a watch over months gathered one per change until the
    unit's TasksMax refused every fork. The check still decides by its own exit status."""
    data, pids = tmp_path / "d.yaml", tmp_path / "pids"
    data.write_text("app:\n  v: 1\n")
    write_resource(tmp_path, "app", "v={{ getv('/app/v') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/app"]\n'
                   f"check_cmd = \"sh -c 'sleep 600 & echo $! > {pids}'\"")
    done = confsync("once", "--confdir", str(tmp_path), "--backend", "file", "--file", str(data))
    helper = int(pids.read_text())
    try:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out").read_text() == "v=1\n"
        wait_for(lambda: not running(helper), timeout=10, what="the check's helper gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)
