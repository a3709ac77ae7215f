"""A configuration reload that supersedes another one still reading its new prefixes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from confsync.daemon import Daemon, SignalReceived
from confsync.settings import Settings, WatchSettings
from confsync.stores import Snapshot
from confsync.stores.file import FileStore
from tests.support.cli import write_resource
from tests.support.daemon import read, wait_for


class GatedFileStore(FileStore):
    """A file store whose snapshots of `/new` wait for `gate` (a slow etcd read)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__(paths)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        if "/new" in prefixes:
            self.waiting.set()
            self.gate.wait(30)
        return super().snapshot(prefixes)


def test_a_broken_reload_after_a_superseded_one_keeps_the_running_set_following(
        tmp_path: Path) -> None:
    """SIGHUP one (new prefixes) is reading its snapshot when SIGHUP two comes; the snapshot
    is dropped as superseded, and the files of SIGHUP two are broken. The running set must go
    on following its data: the superseded reload's follower was left in charge, its events
    were dropped and nothing rendered again until the next good reload."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\nnew:\n  v: n\n")
    dest = tmp_path / "out.conf"
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=confdir, backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    daemon = Daemon(settings, {"confdir": str(confdir), "backend": "file",
                               "file_paths": [str(data)], "watch.wait_min": "0s",
                               "watch.wait_max": "0s"})
    store = GatedFileStore([data])
    daemon.store = store
    daemon.follower = daemon._new_follower()
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: read(dest) == "one\n", what="first render")
        write_resource(confdir, "app", "{{ getv('/app/v') }} {{ getv('/new/v') }}\n",
                       f'dest = "{dest}"\nkeys = ["/app", "/new"]')
        daemon.events.put(SignalReceived(signal.SIGHUP))
        assert store.waiting.wait(10), "the reload never read its new prefixes"
        (confdir / "conf.d" / "broken.toml").write_text("[template\n")
        daemon.events.put(SignalReceived(signal.SIGHUP))
        wait_for(lambda: daemon.reload_config_at is not None, what="the second SIGHUP taken")
        store.gate.set()
        wait_for(lambda: daemon.pending is None or daemon.pending.snapshot_in,
                 what="the first reload's snapshot in")
        wait_for(lambda: daemon.reload_config_at is None, what="the second reload done")
        data.write_text("app:\n  v: two\nnew:\n  v: n\n")
        wait_for(lambda: read(dest) == "two\n", timeout=15,
                 what="the running set following its data")
    finally:
        store.gate.set()
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=10)
    assert not thread.is_alive()
