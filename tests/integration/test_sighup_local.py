"""Configuration reloads (SIGHUP) against a local file store: superseded reloads, heartbeats."""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

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


def test_a_reload_renders_a_file_the_judge_found_in_step_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP renders every resource of the new set to judge it, then applies the set: each
    resource was rendered a second time, from the same data by the same templates (1,000
    resources reading 10 prefixes of 5,000 keys: 7 s on the loop). A dest that holds what the
    judge rendered is now taken as the apply's render; one that changes (an edited template,
    a resource that reads a new prefix, judged on the new prefixes' snapshot) renders again."""
    from confsync.ops.events import Observer
    from confsync.renderer import Rendered, Renderer
    from confsync.resources import Resource

    renders: collections.Counter[str] = collections.Counter()
    reloads: list[tuple[bool, dict[str, int]]] = []
    inner = Renderer.render_result

    def counted(self: Renderer, resource: Resource, mirror: object) -> Rendered:
        renders[resource.name] += 1
        return inner(self, resource, mirror)  # type: ignore[arg-type]

    monkeypatch.setattr(Renderer, "render_result", counted)

    class Reloads(Observer):
        def config_reloaded(self, ok: bool, message: str) -> None:
            reloads.append((ok, dict(renders)))  # (what the judge and the apply rendered)
            renders.clear()

    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\nnew:\n  v: nv\n")  # (a bare n is false, as to confd)
    confdir = tmp_path / "cd"
    dest = {name: tmp_path / f"{name}.conf" for name in ("same", "edited", "moved")}
    for name in dest:
        write_resource(confdir, name, "{{ getv('/app/v') }}\n",
                       f'dest = "{dest[name]}"\nkeys = ["/app"]')
    settings = Settings(confdir=confdir, backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    daemon = Daemon(settings, {"confdir": str(confdir), "backend": "file",
                               "file_paths": [str(data)]}, [Reloads()])
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: all(read(d) == "one\n" for d in dest.values()), what="first render")
        renders.clear()
        (confdir / "templates" / "edited.tmpl").write_text("edited {{ getv('/app/v') }}\n")
        daemon.events.put(SignalReceived(signal.SIGHUP))
        wait_for(lambda: len(reloads) == 1, what="the first reload")
        write_resource(confdir, "moved", "{{ getv('/app/v') }} {{ getv('/new/v') }}\n",
                       f'dest = "{dest["moved"]}"\nkeys = ["/app", "/new"]')
        daemon.events.put(SignalReceived(signal.SIGHUP))
        wait_for(lambda: len(reloads) == 2, what="the second reload")
    finally:
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert reloads == [(True, {"same": 1, "edited": 2, "moved": 1}),
                       (True, {"same": 1, "edited": 1, "moved": 2})]
    assert [read(d) for d in dest.values()] == ["one\n", "edited one\n", "one nv\n"]
