"""The store follower never dies quietly, and one failed resync never leaves /ready red (issue 13,
items 5 and 6), against real etcd servers and the real `confsync watch`."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_etcd_tls_auth import _config, start_secure
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe


def test_unreadable_password_file_at_reconnect_is_survived_and_told(
        etcd_binary: str, tmp_path: Path) -> None:
    etcd = start_secure(etcd_binary, tmp_path / "etcd")
    out = tmp_path / "out.txt"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--config", str(_config(tmp_path, etcd, etcd.password_file)),
                     "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log",
                     env={"CONFSYNC_LOG_FORMAT": "text", "CONFSYNC_WATCH_WAIT_MIN": "0"})
    moved = etcd.password_file.with_name("password.away")
    try:
        wait_for(lambda: "b=10.0.0.2:80" in read(out), 20, what="the first render")
        wait_for(lambda: probe(base, "/ready")[0] == 200, 20, what="/ready 200")
        etcd.password_file.rename(moved)
        etcd.member.kill()  # the reconnect must read the password file again
        etcd.member.start()
        etcd.wait_serving()
        w.wait_log("cannot read password", timeout=30)
        # Alive, saying why it is not following, and still beating (the loop is fine).
        status, body = probe(base, "/ready")
        assert status == 503 and "watch not connected" in body["reasons"], body
        assert "password" in body.get("watch_lost", ""), body
        assert probe(base, "/health")[0] == 200
        assert w.proc.poll() is None

        moved.rename(etcd.password_file)
        etcd.ctl("put", "/tls/backend/c", "10.0.0.3:80")
        wait_for(lambda: "c=10.0.0.3:80" in read(out), 40,
                 what=f"recovery once the file is back\n{w.output()[-3000:]}")
        wait_for(lambda: probe(base, "/ready")[0] == 200, 20, what="/ready 200 again")
        assert w.proc.poll() is None
    finally:
        if moved.exists():
            moved.rename(etcd.password_file)
        code = w.stop()
        etcd.member.stop()
    assert code == 0, w.output()[-3000:]


def test_one_failed_resync_does_not_leave_ready_red(etcd_private: EtcdMember,
                                                    tmp_path: Path) -> None:
    prefix = f"/r-{uuid.uuid4().hex[:8]}"
    c = client(etcd_private.endpoint)
    c.put(prefix + "/k/a", "1")
    dest = tmp_path / "out.txt"
    write_resource(tmp_path / "cd", "list",
                   "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/k"]')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd_private.endpoint,
                     "--prefix", prefix, "--wait-min", "0",
                     "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log",
                     env={"CONFSYNC_WATCH_INTERVAL": "1s", "CONFSYNC_ETCD_TIMEOUT": "1s"})
    try:
        wait_for(lambda: read(dest) == "/k/a=1\n", 20, what="first render")
        wait_for(lambda: probe(base, "/ready")[0] == 200, 20, what="/ready 200")
        etcd_private.freeze()  # a resync times out; the stream itself survives a short freeze
        try:
            wait_for(lambda: probe(base, "/ready")[0] == 503, 20, what="/ready 503 while frozen")
        finally:
            etcd_private.thaw()
        wait_for(lambda: probe(base, "/ready")[0] == 200, 30,
                 what=f"/ready 200 once resyncs work again\n{w.output()[-3000:]}")
        c.put(prefix + "/k/b", "2")
        wait_for(lambda: read(dest) == "/k/a=1\n/k/b=2\n", 30, what="the watch still follows")
        assert probe(base, "/ready")[0] == 200
    finally:
        etcd_private.thaw()
        code = w.stop()
    assert code == 0, w.output()[-3000:]


def test_a_dead_follower_thread_is_noticed_restarted_and_resumed(tmp_path: Path) -> None:
    """A follower killed by something no `except Exception` catches: /health says so, the loop
    restarts it from its last revisions, and changes made meanwhile arrive."""
    import threading

    from confsync.daemon import Daemon
    from confsync.ops.events import Observer
    from confsync.settings import Settings, WatchSettings
    from confsync.stores.file import FileStore

    class Fatal(BaseException):
        pass

    class DyingOnce(FileStore):
        died = False

        def watch(self, prefixes, start_revision, sink, starts=None):  # type: ignore[no-untyped-def]
            if not DyingOnce.died:
                DyingOnce.died = True
                raise Fatal("boom")
            return super().watch(prefixes, start_revision, sink)

    class Parts(Observer):
        def __init__(self) -> None:
            self.failed: list[str] = []
            self.recovered: list[str] = []

        def part_failed(self, part: str, reason: str) -> None:
            self.failed.append(part)

        def part_recovered(self, part: str) -> None:
            self.recovered.append(part)

    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=tmp_path / "cd", backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    parts = Parts()
    daemon = Daemon(settings, observers=[parts])
    daemon.store = DyingOnce([data])
    daemon.follower = daemon._new_follower()
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: read(dest) == "one\n", what="first render")
        wait_for(lambda: parts.failed == ["follower"], what="the dead follower noticed")
        wait_for(lambda: parts.recovered == ["follower"], timeout=15, what="restarted")
        data.write_text("app:\n  v: two\n")
        wait_for(lambda: read(dest) == "two\n", timeout=15, what="changes follow again")
    finally:
        daemon.events.put(__import__("confsync.daemon").daemon.SignalReceived(signal.SIGTERM))
        thread.join(timeout=20)
    assert not thread.is_alive() and daemon.exit_code == 0


def test_health_is_red_while_a_part_is_dead() -> None:
    from confsync.ops.metrics import Metrics

    m = Metrics()
    m.heartbeat()
    assert m.health()[0] is True
    m.part_failed("follower", "the store follower thread died")
    ok, detail = m.health()
    assert not ok and detail["failed_parts"] == {"follower": "the store follower thread died"}
    m.part_recovered("follower")
    assert m.health()[0] is True


def _file_daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    from confsync.daemon import Daemon
    from confsync.settings import Settings, WatchSettings

    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=tmp_path / "cd", backend="file", file_paths=(data,),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    daemon = Daemon(settings)
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return daemon, data, dest


def test_a_loop_error_is_logged_resynced_and_survived(tmp_path: Path) -> None:
    import threading

    from confsync.daemon import SignalReceived

    daemon, data, dest = _file_daemon(tmp_path)
    real = daemon._on_batch
    calls: list[object] = []

    def failing_once(event):  # type: ignore[no-untyped-def]
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        real(event)

    daemon._on_batch = failing_once  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: read(dest) == "one\n", what="first render")
        data.write_text("app:\n  v: two\n")  # this batch is lost to the bug; the resync heals
        wait_for(lambda: read(dest) == "two\n", timeout=15, what="resynced after the error")
        data.write_text("app:\n  v: three\n")
        wait_for(lambda: read(dest) == "three\n", timeout=15, what="following again")
    finally:
        daemon.events.put(SignalReceived(signal.SIGTERM))
        thread.join(timeout=20)
    assert daemon.exit_code == 0 and len(calls) >= 2


def test_a_loop_that_keeps_failing_exits_70(tmp_path: Path) -> None:
    import threading

    from confsync.daemon import EXIT_INTERNAL_ERROR

    daemon, data, _ = _file_daemon(tmp_path)

    def always(event):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug that stays")

    daemon._on_snapshot = always  # type: ignore[method-assign]
    daemon._on_batch = always  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    for i in range(6):
        time.sleep(0.3)
        data.write_text(f"app:\n  v: v{i}\n")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert daemon.exit_code == EXIT_INTERNAL_ERROR


def test_a_starved_watch_is_reopened_and_what_it_missed_arrives(
        etcd_private: EtcdMember, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd can starve a watcher without a word (etcd issue 17529): the stream and its pings
    live on, no event and no progress notification comes, and the files go stale forever.
    Here the first session's responses are swallowed; `etcd.silence_limit` reopens the watch
    from the mirror's revision, and the change made meanwhile is rendered."""
    import threading

    from confsync.daemon import Daemon
    from confsync.settings import EtcdSettings, Settings, WatchSettings
    from confsync.stores import etcd as etcd_store

    sessions: list[object] = []
    real_init, real_on_response = etcd_store._EtcdWatch.__init__, etcd_store._EtcdWatch._on_response

    def recording_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        sessions.append(self)
        real_init(self, *args, **kwargs)

    def starving(self, prefix, response):  # type: ignore[no-untyped-def]
        if self is not sessions[0]:
            real_on_response(self, prefix, response)

    monkeypatch.setattr(etcd_store._EtcdWatch, "__init__", recording_init)
    monkeypatch.setattr(etcd_store._EtcdWatch, "_on_response", starving)
    prefix = f"/s-{uuid.uuid4().hex[:8]}"
    c = client(etcd_private.endpoint)
    c.put(prefix + "/app/v", "one")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    settings = Settings(confdir=tmp_path / "cd", prefix=prefix,
                        etcd=EtcdSettings(endpoints=(etcd_private.endpoint,), silence_limit=1.0),
                        watch=WatchSettings(wait_min=0, wait_max=0))
    daemon = Daemon(settings)
    daemon._install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(lambda: read(dest) == "one\n", 20, what="first render")
        c.put(prefix + "/app/v", "two")  # the starved session never tells
        wait_for(lambda: read(dest) == "two\n", 20, what="the missed change, after a reopen")
        assert len(sessions) >= 2
        c.put(prefix + "/app/v", "three")  # and the new session follows
        wait_for(lambda: read(dest) == "three\n", 10, what="the reopened watch following")
    finally:
        daemon.stopping = True
        daemon.events.put(None)
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_progress_notifications_keep_a_quiet_watch_open(etcd_binary: str,
                                                        tmp_path: Path) -> None:
    """No false alarm: a watch that sees no change but gets etcd's progress notifications (every
    300 ms here, 10 min by default) is never reopened, for each of two prefixes."""
    from tests.support.etcd_server import start_single

    member = start_single(etcd_binary, tmp_path / "etcd",
                          ["--experimental-watch-progress-notify-interval", "300ms"])
    for name in ("a", "b"):
        write_resource(tmp_path / "cd", name, f"{{{{ getv('/{name}', 'none') }}}}\n",
                       f'dest = "{tmp_path / name}.out"\nkeys = ["/{name}"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", member.endpoint,
                     "--prefix", "/quiet", log=tmp_path / "watch.log",
                     env={"CONFSYNC_ETCD_SILENCE_LIMIT": "1.5s"})
    try:
        wait_for(lambda: read(tmp_path / "b.out") == "none\n", 20, what="first render")
        w.wait_log("watching")
        time.sleep(4.5)  # three silence limits without a change
        assert "silent for" not in w.output(), w.output()[-2000:]
        assert w.output().count(" from revision ") == 1, w.output()[-2000:]
        client(member.endpoint).put("/quiet/a", "x")
        wait_for(lambda: read(tmp_path / "a.out") == "x\n", 10, what="the watch still follows")
    finally:
        code = w.stop()
        member.stop()
    assert code == 0, w.output()[-2000:]


def test_a_stop_of_the_process_is_not_taken_for_a_silent_watch(etcd_binary: str,
                                                              tmp_path: Path) -> None:
    """The silence limit counted the monotonic clock, which runs on while the process is
    stopped (SIGSTOP, a paused VM, a debugger): on SIGCONT the position check, waking before
    the notifications queued meanwhile were read, found the watch "silent" for the whole stop,
    logged etcd as starving it, reported the watch lost (/ready 503) and reopened it."""
    from tests.support.etcd_server import start_single

    member = start_single(etcd_binary, tmp_path / "etcd",
                          ["--experimental-watch-progress-notify-interval", "300ms"])
    write_resource(tmp_path / "cd", "a", "{{ getv('/a', 'none') }}\n",
                   f'dest = "{tmp_path / "a"}.out"\nkeys = ["/a"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", member.endpoint,
                     "--prefix", "/quiet", log=tmp_path / "watch.log",
                     env={"CONFSYNC_ETCD_SILENCE_LIMIT": "1.5s"})
    try:
        wait_for(lambda: read(tmp_path / "a.out") == "none\n", 20, what="first render")
        w.wait_log(" from revision ")
        w.signal(signal.SIGSTOP)
        time.sleep(2.5)
        w.signal(signal.SIGCONT)
        time.sleep(1.0)
        assert "silent for" not in w.output(), w.output()[-2000:]
        assert w.output().count(" from revision ") == 1, w.output()[-2000:]
        client(member.endpoint).put("/quiet/a", "x")
        wait_for(lambda: read(tmp_path / "a.out") == "x\n", 10, what="the watch still follows")
    finally:
        code = w.stop()
        member.stop()
    assert code == 0, w.output()[-2000:]
