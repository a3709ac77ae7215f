"""The daemon with local sources: the file backend, conf.d watching, and the periodic resync."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from confsync.daemon import Daemon, SignalReceived
from confsync.settings import Settings, WatchSettings
from confsync.stores import WatchHandle, WatchSink
from confsync.stores.file import FileStore
from tests.support.cli import write_resource
from tests.support.configmap import swap_data
from tests.support.daemon import WatchProcess, read, reads, wait_for


def test_file_backend_rerenders_when_its_file_changes(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: 8080\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file", str(data),
                     "--wait-min", "0", log=tmp_path / "log")
    try:
        wait_for(lambda: read(dest) == "port 8080\n", what="first render")
        data.write_text("app:\n  port: 9090\n")
        wait_for(lambda: read(dest) == "port 9090\n", what="re-render on file change")
        data.write_text("app:\n  port: [broken\n")  # unparsable: keep the last good data
        w.wait_log("keeping the last good data")
        assert read(dest) == "port 9090\n"
        w.signal(signal.SIGINT)
        assert w.proc.wait(timeout=10) == 0
    finally:
        w.stop()


def test_confdir_watching_reloads_resources_on_edit(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  name: x\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "v1 {{ getv('/app/name') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file", str(data),
                     log=tmp_path / "log", env={"CONFSYNC_WATCH_CONFDIR": "true"})
    try:
        wait_for(lambda: read(dest) == "v1 x\n", what="first render")
        (tmp_path / "cd" / "templates" / "app.tmpl").write_text("v2 {{ getv('/app/name') }}\n")
        wait_for(lambda: read(dest) == "v2 x\n", what="template edit picked up")
        (tmp_path / "cd" / "templates" / "app.tmpl").write_text("v3 {{ getv('/app/nope') }}\n")
        w.wait_log("configuration reload refused")
        assert read(dest) == "v2 x\n"
    finally:
        w.stop()


class DeafFileStore(FileStore):
    """A file store whose watch never delivers: only the periodic resync can see changes."""

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: object = None) -> WatchHandle:
        class Nothing:
            def cancel(self) -> None:
                return None

        return Nothing()


def test_periodic_resync_logs_and_fixes_drift(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=tmp_path / "cd", backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0, interval=0.3))
    daemon = Daemon(settings)
    daemon.store = DeafFileStore([data])
    daemon.follower = daemon._new_follower()
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        wait_for(lambda: read(dest) == "one\n", what="first render")
        data.write_text("app:\n  v: two\n")
        wait_for(lambda: read(dest) == "two\n", what="resync fixed the drift")
        assert "resync snapshot at revision" in caplog.text
        assert "keys differed from the mirror" in caplog.text
    finally:
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_reload_drops_renders_pending_under_the_old_definition(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    old_dest, new_dest = tmp_path / "old.conf", tmp_path / "new.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{old_dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=tmp_path / "cd", backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=1.0, wait_max=2.0))
    daemon = Daemon(settings, {"confdir": str(tmp_path / "cd"), "backend": "file",
                               "file_paths": [str(data)], "watch.wait_min": "1s"})
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: read(old_dest) == "one\n", what="first render")
        data.write_text("app:\n  v: two\n")
        wait_for(lambda: len(daemon.planner) == 1, what="a pending render of the old definition")
        write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                       f'dest = "{new_dest}"\nkeys = ["/app"]')
        daemon.events.put(SignalReceived(signal.SIGHUP))
        wait_for(lambda: read(new_dest) == "two\n", what="the new definition rendered")
        time.sleep(2.5)  # past wait_max: a stale pending render would have fired by now
        assert read(old_dest) == "one\n"
    finally:
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=10)


def test_file_backend_follows_kubernetes_configmap_updates(tmp_path: Path) -> None:
    """A ConfigMap volume: data.yaml -> ..data/data.yaml, ..data -> ..<timestamp>; an update
    writes a new timestamped directory, swaps ..data by rename and deletes the old one. The
    watch used to follow the resolved directory, which the first update deletes: every later
    update was missed."""
    cm = tmp_path / "configmap"
    cm.mkdir()

    def publish(version: str) -> None:
        target = cm / f"..2026_{version}"
        target.mkdir()
        (target / "data.yaml").write_text(f"app:\n  v: {version}\n")
        swap_data(cm, target)

    publish("one")
    (cm / "data.yaml").symlink_to("..data/data.yaml")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file",
                     "--file", str(cm / "data.yaml"), "--wait-min", "0", log=tmp_path / "log")
    try:
        wait_for(lambda: read(dest) == "one\n", what="first render")
        for version in ("two", "three", "four"):
            publish(version)
            wait_for(functools.partial(reads, dest, f"{version}\n"), 10,
                     what=f"ConfigMap update to {version}\n{w.output()[-2000:]}")
    finally:
        w.stop()


def _inotify_and_pipes(pid: int) -> tuple[int, int]:
    """(inotify instances, pipes) the process holds."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue  # closed while listed
    return (sum(t == "anon_inode:inotify" for t in targets),
            sum(t.startswith("pipe:") for t in targets))


def test_a_data_directory_deleted_and_recreated_leaks_no_inotify_instance(tmp_path: Path) -> None:
    """Each retry while the directory was gone leaked an inotify instance and a pipe about every
    other time (watchdog's reader stopped before its first read); 128 instances per user."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / "data.yaml"
    data.write_text("app:\n  port: 1\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--backend", "file", "--file", str(data),
                     "--wait-min", "0", log=tmp_path / "log")
    try:
        wait_for(functools.partial(reads, dest, "port 1\n"), what="first render")
        for port in range(2, 5):
            shutil.rmtree(data_dir)
            time.sleep(2)  # retries at 0.1, 0.2, 0.4, 0.8 s: about four starts on nothing
            data_dir.mkdir()
            data.write_text(f"app:\n  port: {port}\n")
            wait_for(functools.partial(reads, dest, f"port {port}\n"), what=f"port {port}")
        # One watcher's worth at most (an instance and its pipe; none when it polls), whenever
        # it was looked at: the count at the first render raced the watcher's own start.
        instances, pipes = _inotify_and_pipes(w.proc.pid)
        assert instances <= 1 and pipes <= 2, (instances, pipes)
    finally:
        w.stop()
