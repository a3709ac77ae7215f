"""Configuration reloads (SIGHUP) against a local file store: superseded reloads, heartbeats."""

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


def test_a_reload_beats_between_the_renders_that_judge_the_new_set(tmp_path: Path) -> None:
    """A SIGHUP renders every resource of the new set before switching. No heartbeat came
    between those renders, though each may take up to render_timeout: /health allows one
    step's bound of lateness, so a set of a few slow templates (or many) turned /health 503,
    and systemd's watchdog killed confsync, at each SIGHUP."""
    from confsync.ops.events import Observer

    class Recorder(Observer):
        def __init__(self) -> None:
            self.events: list[str] = []

        def heartbeat(self) -> None:
            self.events.append("beat")

        def reloading_config(self) -> None:
            self.events.append("reloading")

        def started(self, resources: object) -> None:
            self.events.append("started")

        def config_reloaded(self, ok: bool, message: str) -> None:
            self.events.append(f"reloaded {ok}")

    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    confdir = tmp_path / "cd"
    names = [f"app{i}" for i in range(4)]
    for name in names:
        write_resource(confdir, name, "{{ getv('/app/v') }}\n",
                       f'dest = "{tmp_path / name}"\nkeys = ["/app"]')
    settings = Settings(confdir=confdir, backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    recorder = Recorder()
    daemon = Daemon(settings, {"confdir": str(confdir), "backend": "file",
                               "file_paths": [str(data)]}, [recorder])
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: all(read(tmp_path / n) == "one\n" for n in names), what="first render")
        daemon.events.put(SignalReceived(signal.SIGHUP))
        wait_for(lambda: "reloaded True" in recorder.events, what="the reload")
    finally:
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=10)
    events = recorder.events
    start = events.index("reloading")
    judged = events[start:events.index("started", start)]
    assert judged.count("beat") >= len(names), judged
