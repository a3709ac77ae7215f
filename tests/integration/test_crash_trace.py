"""A daemon killed by a fatal signal in native code leaves every thread's stack in its log.

A crash inside gRPC's C code (a stub made on a closed channel) ended `watch` with SIGSEGV and
not a line: the journal showed a restart and nothing of where it died. Long-running commands
enable faulthandler; a one-shot command keeps its start lean and does not."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for


def test_a_segfaulting_watch_says_where_every_thread_was(
        tmp_path: Path, watchers: list[WatchProcess]) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                     str(data), "--wait-min", "0", log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(dest) == "one\n", 20, what="first render")
    w.signal(signal.SIGSEGV)
    assert w.proc.wait(timeout=20) == -signal.SIGSEGV
    out = w.output()
    assert "Fatal Python error: Segmentation fault" in out, out[-2000:]
    # Every thread's stack, as far as faulthandler got: it walks the other threads' frames
    # while they run, and a walk that trips on one that changed under it ends the dump (seen
    # once in CI, cut inside a watchdog thread's stack before the main thread's came).
    assert "(most recent call first):" in out and 'File "' in out, out[-2000:]
    assert "confsync/" in out or "watchdog/" in out, out[-2000:]
