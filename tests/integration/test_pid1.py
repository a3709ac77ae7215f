"""`confsync watch` as PID 1 of a container without an init, real processes in a real PID
namespace: the orphans its commands leave are reaped, and reaping never takes a command's exit
status (a failing check still fails)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, catches, read, wait_for
from tests.support.pidns import AS_INIT, pid_namespaces_work


@pytest.mark.skipif(not pid_namespaces_work(),
                    reason="cannot create a PID namespace here (unshare --pid needs root)")
def test_watch_as_pid1_reaps_orphans_and_a_failing_check_still_fails(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: v0\n")
    dest = tmp_path / "out"
    # Both commands leave a background child behind: an orphan of PID 1 once they exit.
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\n'
                   'check_cmd = ["sh", "-c", "sleep 0.05 & ! grep -q bad \\"$1\\"", "sh", '
                   '"{{src}}"]\n'
                   'reload_cmd = ["sh", "-c", "sleep 0.05 & exit 0"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                     str(data), "--wait-min", "0", log=tmp_path / "watch.log", wrapper=AS_INIT)
    try:
        wait_for(lambda: psutil.Process(w.proc.pid).children(), 10, what="the namespace's init")
        init = psutil.Process(w.proc.pid).children()[0]
        wait_for(lambda: read(dest) == "v0\n", 20, what="first render")
        for i in range(1, 9):
            data.write_text(f"app:\n  v: v{i}\n")
            wait_for(lambda i=i: read(dest) == f"v{i}\n", 10,  # type: ignore[misc]
                     what=f"render {i}")
        time.sleep(1.5)  # the orphans' sleeps end; a heartbeat or two reaps them
        zombies = [c.pid for c in init.children() if c.status() == psutil.STATUS_ZOMBIE]
        assert zombies == [], f"{len(zombies)} zombies under PID 1\n{w.output()[-2000:]}"

        data.write_text("app:\n  v: bad\n")  # the check fails: its status must not be stolen
        w.wait_log("check failed")
        time.sleep(0.5)
        assert read(dest) == "v8\n"
        init.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=15) == 0
    finally:
        w.stop()


@pytest.mark.skipif(not pid_namespaces_work(),
                    reason="cannot create a PID namespace here (unshare --pid needs root)")
def test_a_sigterm_to_watch_as_pid1_during_its_start_up_stops_it(tmp_path: Path) -> None:
    """PID 1 ignores a signal it has no handler for, and `watch`'s handler came only after its
    imports, settings and resources: a SIGTERM then (a pod deleted as it starts) was lost, and
    it ran until the SIGKILL. It is held from confsync's first line now, and acted on once the
    loop's handler is in place."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: v0\n")
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{tmp_path / "out"}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                     str(data), log=tmp_path / "watch.log", wrapper=AS_INIT)
    try:
        wait_for(lambda: psutil.Process(w.proc.pid).children(), 10, what="the namespace's init")
        init = psutil.Process(w.proc.pid).children()[0].pid
        wait_for(lambda: catches(init, signal.SIGHUP), 10, interval=0.001,
                 what="confsync's entry (signals held)")
        os.kill(init, signal.SIGTERM)
        assert "watching with" not in w.output(), "the handler was in place already"
        assert w.proc.wait(timeout=10) == 0, w.output()[-3000:]
        assert "SIGTERM: finishing and exiting" in w.output()
    finally:
        w.stop()
