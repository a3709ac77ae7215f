"""Months of configuration churn under one `confsync watch`: resources added, removed and
added back, and SIGHUPs (a config-management run sends one each time) between data changes.
Whatever a resource leaves behind must go with it, and what is still true of the resources
that stay must survive the reload.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import probe

pytestmark = pytest.mark.etcd

LIST = "{% for kv in gets('/x/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


@pytest.fixture
def watch(etcd: EtcdMember, tmp_path: Path, prefix: str) -> Iterator[tuple[WatchProcess, int]]:
    """`confsync watch` of resources `keep` and `gone` (each with a reload_cmd and a check),
    /metrics on a port of its own."""
    client(etcd.endpoint).put(f"{prefix}/x/1", "one")
    for name in ("keep", "gone"):
        write_resource(tmp_path / "confdir", name, LIST,
                       f'dest = "{tmp_path / name}.out"\nkeys = ["/x"]\n'
                       f'check_cmd = "true {{{{src}}}}"\nreload_cmd = "true {name}"\n')
    port = free_port()
    process = WatchProcess("--confdir", str(tmp_path / "confdir"), "--endpoints",
                           etcd.endpoint, "--prefix", prefix, "--wait-min", "0s",
                           "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(tmp_path / "gone.out") == "/x/1=one\n", 20, what="first render")
        yield process, port
    finally:
        process.stop()


def test_a_removed_resource_leaves_no_metric_series(
        watch: tuple[WatchProcess, int], etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    """Each resource ever removed used to keep about 40 lines of /metrics (its counters and
    histograms) for the daemon's life: conf.d generated per service, churned for months."""
    process, port = watch
    client(etcd.endpoint).put(f"{prefix}/x/2", "two")  # an update: checks and reloads counted
    wait_for(lambda: "/x/2=two" in read(tmp_path / "gone.out"), 10, what="update")
    wait_for(lambda: 'confsync_reloads_total{outcome="ok",resource="gone"}'
             in metrics_text(port), 10, what="gone's reload counted")
    (tmp_path / "confdir" / "conf.d" / "gone.toml").unlink()
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 1 resources")
    text = metrics_text(port)
    assert 'resource="gone"' not in text, [line for line in text.splitlines()
                                           if 'resource="gone"' in line]
    # (the first render and the update)
    assert 'confsync_reloads_total{outcome="ok",resource="keep"} 2.0' in text, text
    assert "confsync_resources 1.0" in text
    assert read(tmp_path / "gone.out") == "/x/1=one\n/x/2=two\n", "a removed dest is left alone"


def test_a_resource_added_back_is_judged_as_at_a_start(
        watch: tuple[WatchProcess, int], etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    """The guard's memory (keys at the last render) of a removed resource stayed for the
    daemon's life: added back months later on a prefix still empty and a new dest, it was
    refused as "all 1 keys vanished" though it never rendered that dest, where a daemon
    started afresh renders it."""
    process, _ = watch
    confdir = tmp_path / "confdir"
    (confdir / "conf.d" / "gone.toml").unlink()
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 1 resources")
    new_dest = tmp_path / "new.out"
    write_resource(confdir, "gone", "header\n" + LIST.replace("/x/", "/y/"),
                   f'dest = "{new_dest}"\nkeys = ["/y"]\n')
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 2 resources")
    wait_for(lambda: read(new_dest) == "header\n", 10,
             what=f"the new dest rendered; log:\n{process.output()[-2000:]}")
    assert "vanished" not in process.output()
    # The guard still holds for a resource that stays: its keys going away keep its file.
    client(etcd.endpoint).delete(f"{prefix}/x/1")
    process.wait_log("all 1 keys under")
    assert read(tmp_path / "keep.out") == "/x/1=one\n"


def test_an_owed_reload_no_resource_will_make_leaves_no_running_copy(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """While a reload is owed, the file the service still runs is kept beside dest
    (`.<dest>.confsync-running`, running_copy.py). A resource removed, moved to another dest
    or left with nothing to reload while its reload was owed left that copy for good: a hard
    link of an old file beside the old dest, which any later run with a resource there took
    for an owed reload and for what the service ran (`check` exit 4)."""
    client(etcd.endpoint).put(f"{prefix}/x/1", "one")
    confdir, old, new = tmp_path / "confdir", tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    up = tmp_path / "up"  # the reloads fail until it exists
    for name in ("removed", "moved", "unreloaded"):
        (old / name).write_text("before\n")
        write_resource(confdir, name, LIST, f'dest = "{old / name}"\nkeys = ["/x"]\n'
                       f'reload_cmd = "test -e {up}"\n')
    process = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                           "--prefix", prefix, "--wait-min", "0s", log=tmp_path / "watch.log")
    watchers.append(process)

    def kept() -> list[str]:
        return sorted(p.name for p in old.iterdir() if p.name.endswith(".confsync-running"))

    wait_for(lambda: len(kept()) == 3, 20, what=f"reloads owed\n{process.output()[-2000:]}")
    (confdir / "conf.d" / "removed.toml").unlink()
    write_resource(confdir, "moved", LIST, f'dest = "{new / "moved"}"\nkeys = ["/x"]\n'
                   f'reload_cmd = "test -e {up}"\n')
    write_resource(confdir, "unreloaded", LIST, f'dest = "{old / "unreloaded"}"\n'
                   'keys = ["/x"]\n')
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 2 resources")
    up.touch()
    # (the moved resource's own copy at its new dest goes when its reload, retried, passes)
    wait_for(lambda: read(new / "moved") == "/x/1=one\n"
             and sorted(p.name for p in new.iterdir()) == ["moved"], 20,
             what=f"the moved resource's reload\n{sorted(new.iterdir())}\n"
                  f"{process.output()[-2000:]}")
    # The old dests' copies are kept for a resource to come back (left_copies.py) while the
    # process runs, at most LEFT_GRACE (tests/unit/test_left_copies.py); gone at its stop.
    assert process.stop() == 0
    assert kept() == []
    assert read(old / "removed") == "before\n"  # (a removed dest is left alone)


def test_an_owed_reload_is_made_when_its_resource_comes_back(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A resource removed while its reload was owed, then added back (a config-management run
    deleting conf.d files and writing them again, a SIGHUP or the conf.d watcher in between):
    its file was current, so nothing reloaded it, and its service ran the old file until the
    next change in etcd. Its running copy is now kept a while for it: the reload is made.
    Owed here as a killed run leaves it: the file installed (there was none before) and an
    empty running copy beside it; the service is down (its reload fails) until `up`."""
    client(etcd.endpoint).put(f"{prefix}/x/1", "one")
    confdir, app = tmp_path / "confdir", tmp_path / "app.conf"
    app.write_text("/x/1=one\n")
    copy = tmp_path / ".app.conf.confsync-running"
    copy.touch(mode=0o600)
    up, reloads = tmp_path / "up", tmp_path / "reloads"
    script = tmp_path / "reload.sh"
    script.write_text(f'test -e "{up}" && echo reloaded >> "{reloads}"\n')
    definition = f'dest = "{app}"\nkeys = ["/x"]\nreload_cmd = "/bin/sh {script}"\n'
    write_resource(confdir, "app", LIST, definition)
    write_resource(confdir, "keep", LIST, f'dest = "{tmp_path / "keep.out"}"\nkeys = ["/x"]\n')
    process = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                           "--prefix", prefix, "--wait-min", "0s", log=tmp_path / "watch.log")
    watchers.append(process)
    process.wait_log("resource app: reload failed")
    (confdir / "conf.d" / "app.toml").unlink()
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 1 resources")
    write_resource(confdir, "app", LIST, definition)
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 2 resources")
    up.touch()
    wait_for(lambda: read(reloads) == "reloaded\n" and not copy.exists(), 30,
             what=f"the owed reload\n{process.output()[-2000:]}")
    assert read(app) == "/x/1=one\n"


class _Holding(BaseHTTPRequestHandler):
    """Answers health checks; holds any other request until `release` is set, then closes
    (HTTP/1.0): a server with a request in flight, which HAProxy refuses to delete."""

    release = threading.Event()

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self.release.wait(20)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"held")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.haproxy
@pytest.mark.parametrize("edit", [False, True], ids=["unchanged", "definition-edited"])
def test_a_server_parked_in_maintenance_is_deleted_after_a_sighup(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path, edit: bool) -> None:
    """A server removed while it has a request in flight is parked in maintenance and deleted
    by a later pass. The list of parked servers lived in the reload target, and every SIGHUP
    made new targets: a server parked before a SIGHUP stayed in HAProxy (in maintenance)
    until the next reload, which with the runtime strategy may be months away. A SIGHUP that
    edits the resource itself (a timeout, its check) makes it a new resource with a new
    target, which still takes over what the old one had parked."""
    _Holding.release = threading.Event()
    holding = ThreadingHTTPServer(("127.0.0.1", 0), _Holding)
    holding.daemon_threads = True
    threading.Thread(target=holding.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    process: WatchProcess | None = None
    requests: list[threading.Thread] = []
    try:
        stack.put_basics(check_interval="200ms")
        stack.put_instance("web", "a", backends["a"].port)
        stack.put_instance("web", "h", int(holding.server_address[1]))
        stack.sync_ok()
        stack.start()
        process = WatchProcess(*stack.cli_args(), "--wait-min", "0s",
                               log=tmp_path / "watch.log")
        process.wait_log("watching /", timeout=15)

        def servers() -> str:
            return stack.admin_command("show servers state be_web")

        def up(name: str) -> bool:  # srv_op_state 2: running (its health check passes)
            return any(f[3] == name and f[5] == "2" for f in map(str.split, servers()
                                                                  .splitlines()) if len(f) > 5)

        wait_for(lambda: up("a") and up("h"), 10, what="a and h up")
        for _ in range(4):  # round robin: some of them held by h
            thread = threading.Thread(target=spread, args=(stack.port, 1, "/slow"),
                                      daemon=True)
            thread.start()
            requests.append(thread)
        def held() -> bool:  # `show stat` CSV: pxname, svname, qcur, qmax, scur, ...
            return any(row[:2] == ["be_web", "h"] and int(row[4] or 0) > 0 for row in (
                line.split(",") for line in stack.admin_command("show stat").splitlines()))

        wait_for(held, 10, what="a request in flight on h")
        stack.delete("/services/web/instances/h")
        wait_for(lambda: "server h " not in stack.cfg.read_text(), 10, what="h out of the file")
        process.wait_log("runtime API")
        assert " h " in servers(), "h has a request in flight: parked, not deleted"
        if edit:
            resource = stack.confdir / "conf.d" / "haproxy.toml"
            text = resource.read_text()
            assert 'reload_timeout = "10s"' in text
            resource.write_text(text.replace('reload_timeout = "10s"', 'reload_timeout = "11s"'))
        process.signal(signal.SIGHUP)  # a config-management run
        process.wait_log("configuration reloaded: 1 resources")
        _Holding.release.set()
        for thread in requests:
            thread.join(10)
        reloads = stack.status().reloads

        weights = iter(range(50, 100))

        def h_gone() -> bool:  # each call a change of a: a runtime pass over the servers
            stack.put_instance("web", "a", backends["a"].port, weight=next(weights))
            return " h " not in servers()

        wait_for(h_gone, 8, interval=0.5, what="h deleted")
        assert stack.status().reloads == reloads, "through the runtime API"
    finally:
        _Holding.release.set()
        if process is not None:
            process.stop()
        stack.stop()
        holding.shutdown()
        holding.server_close()


def inotify_watches(pid: int) -> int:
    """Watches held by the process's inotify instances (`inotify wd:` lines of its fdinfo)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                total += Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().count("inotify wd:")
        except OSError:
            pass  # closed meanwhile
    return total


def test_turning_watch_confdir_off_stops_the_watcher(
        etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    """`[watch] confdir = false` taken by a SIGHUP: the conf.d/templates watcher went on
    reloading at every edit (and holding its inotify watches) until a restart."""
    confdir = tmp_path / "confdir"
    config = tmp_path / "confsync.toml"
    config.write_text(f'confdir = "{confdir}"\n[watch]\nwait_min = "0s"\nconfdir = true\n')
    client(etcd.endpoint).put(f"{prefix}/x/1", "one")
    dest = tmp_path / "out"
    write_resource(confdir, "r", "v1\n" + LIST, f'dest = "{dest}"\nkeys = ["/x"]\n')
    process = WatchProcess("--config", str(config), "--endpoints", etcd.endpoint, "--prefix",
                           prefix, log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(dest) == "v1\n/x/1=one\n", 20, what="first render")
        (confdir / "templates" / "r.tmpl").write_text("v2\n" + LIST)  # followed: no SIGHUP
        wait_for(lambda: read(dest) == "v2\n/x/1=one\n", 10, what="the edit followed")
        assert inotify_watches(process.proc.pid) > 0
        config.write_text(f'confdir = "{confdir}"\n[watch]\nwait_min = "0s"\nconfdir = false\n')
        process.signal(signal.SIGHUP)
        process.wait_log("configuration reloaded", count=2)
        wait_for(lambda: inotify_watches(process.proc.pid) == 0, 5, what="watches released")
        (confdir / "templates" / "r.tmpl").write_text("v3\n" + LIST)
        time.sleep(1.5)  # the watcher reloaded 0.5 s after an edit
        assert read(dest) == "v2\n/x/1=one\n", "an edit waits for a SIGHUP"
        process.signal(signal.SIGHUP)
        wait_for(lambda: read(dest) == "v3\n/x/1=one\n", 10, what="the SIGHUP's reload")
        # Turned on again: edits are followed, and it is not reported as a dead watcher.
        config.write_text(f'confdir = "{confdir}"\n[watch]\nwait_min = "0s"\nconfdir = true\n')
        process.signal(signal.SIGHUP)
        process.wait_log("conf.d/templates watcher started", timeout=10)
        (confdir / "templates" / "r.tmpl").write_text("v4\n" + LIST)
        wait_for(lambda: read(dest) == "v4\n/x/1=one\n", 10, what="the edit followed again")
        assert "watcher stopped; restarting" not in process.output()
    finally:
        process.stop()


def test_a_sighup_storm_while_etcd_does_not_answer_keeps_the_loop_beating(
        etcd_private: EtcdMember, tmp_path: Path, prefix: str) -> None:
    """Each SIGHUP was a reload of its own, and one that replaced a reload still reading its
    new prefixes from an etcd that does not answer (a black hole, a frozen VM) stopped its
    follower mid-read: the loop waited out the read's timeout once per SIGHUP. 10 SIGHUPs in
    a burst held it 10 timeouts (20 s here, 5 s each at the default): /health 503 after 10 s,
    systemd's watchdog kill at 90. SIGHUPs queued together are one reload now, and one that
    finds an earlier reload reading waits for that read to end."""
    c = client(etcd_private.endpoint)
    for n in range(12):
        c.put(f"{prefix}/p{n}/v", str(n))
    confdir, dest = tmp_path / "confdir", tmp_path / "out"

    def define(n: int) -> None:
        write_resource(confdir, "m", "{{ getv('/v') }}\n",
                       f'dest = "{dest}"\nprefix = "/p{n}"\nkeys = ["/v"]\n')

    define(0)
    port = free_port()
    process = WatchProcess("--confdir", str(confdir), "--endpoints", etcd_private.endpoint,
                           "--prefix", prefix, "--wait-min", "0s", "--metrics-address",
                           f"127.0.0.1:{port}", log=tmp_path / "watch.log",
                           env={"CONFSYNC_ETCD_TIMEOUT": "2s"})
    try:
        wait_for(lambda: read(dest) == "0\n", 20, what="first render")
        etcd_private.freeze()
        try:
            for n in range(1, 11):  # config management, retried in a loop, each a new prefix
                define(n)
                process.signal(signal.SIGHUP)
                time.sleep(0.01)
            worst, until = 0.0, time.monotonic() + 8
            while time.monotonic() < until:
                _, body = probe(f"http://127.0.0.1:{port}", "/health", timeout=2)
                worst = max(worst, float(body.get("heartbeat_age_seconds", 0.0)))
                time.sleep(0.2)
        finally:
            etcd_private.thaw()
        assert worst < 5, f"the loop stood still {worst:.1f}s\n{process.output()[-3000:]}"
        process.signal(signal.SIGHUP)  # etcd back: the last definition applies now
        wait_for(lambda: read(dest) == "10\n", 15, what=f"the last definition applied\n"
                 f"{process.output()[-3000:]}")
        assert process.proc.poll() is None
    finally:
        process.stop()
