"""/health's view of the store follower across config reloads (pure loop logic: a Daemon on
the file backend, its heartbeat checks called by hand)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

from confsync.daemon import Daemon
from confsync.ops.metrics import Metrics
from confsync.settings import Settings, WatchSettings
from confsync.watcher import StoreFollower
from tests.support.cli import write_resource


def test_a_follower_replaced_while_its_restart_waited_leaves_health_green(
        tmp_path: Path) -> None:
    """A dead follower is reported (/health 503) and restarted after a backoff. A SIGHUP with
    new prefixes in between replaced it with a new one, which runs; but only the restart said
    the part had recovered, so /health stayed 503 for good (a liveness probe's restart)."""
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  v: '1'\nb:\n  v: '2'\n")
    confdir = tmp_path / "cd"
    write_resource(confdir, "a", "{{ getv('/a/v') }}\n",
                   f'dest = "{tmp_path / "a"}"\nkeys = ["/a"]')
    metrics = Metrics()
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)]},
                    observers=[metrics])
    daemon.ready = True
    dead = StoreFollower(daemon.store, daemon.state.prefixes, queue.SimpleQueue())
    dead.stop()
    dead.start()  # (ends at once: a thread that died)
    dead.join(timeout=5)
    daemon.follower = dead
    try:
        daemon._check_parts(time.monotonic())
        assert not metrics.health()[0] and daemon._follower_restart_at is not None
        write_resource(confdir, "b", "{{ getv('/b/v') }}\n",
                       f'dest = "{tmp_path / "b"}"\nkeys = ["/b"]')
        assert daemon.reload_config()  # new prefixes: a new follower reads them
        assert daemon.follower.is_alive()
        daemon._check_parts(time.monotonic())
        metrics.heartbeat()
        ok, detail = metrics.health()
        assert ok, detail
    finally:
        daemon.follower.stop()
        daemon.follower.join(timeout=5)
        daemon.store.close()
        if daemon.pending is not None:
            daemon.pending.store.close()
