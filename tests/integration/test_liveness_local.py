"""The conf.d/templates watcher (`watch.confdir = true`) is restarted when it dies: here, when
conf.d is replaced by a new directory (how config-management and Kubernetes ConfigMaps deploy),
which ends watchdog's emitter for the old one (issue 13, item 5)."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource
from tests.support.configmap import swap_data
from tests.support.daemon import WatchProcess, read, reads, wait_for
from tests.support.etcd_server import free_port
from tests.support.http_probe import probe


def _watched_file_backend(tmp_path: Path, template: str) -> tuple[Path, Path, Path]:
    """(config, data file, confdir): the file backend with `watch.confdir` on, one resource
    `app` rendering `template` to tmp_path/out from data /app/v = one."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    cd = tmp_path / "cd"
    write_resource(cd, "app", template, f'dest = "{tmp_path / "out"}"\nkeys = ["/app"]')
    config = tmp_path / "confsync.toml"
    config.write_text(f'confdir = "{cd}"\nbackend = "file"\n[file]\npaths = ["{data}"]\n'
                      f'[watch]\nconfdir = true\nwait_min = "0s"\n')
    return config, data, cd


def test_edits_after_conf_d_was_replaced_still_reload(tmp_path: Path) -> None:
    config, _, cd = _watched_file_backend(tmp_path, "{{ getv('/app/v') }}\n")
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n", 20, what="first render")
        staged = tmp_path / "conf.d.new"
        shutil.copytree(cd / "conf.d", staged)
        shutil.rmtree(cd / "conf.d")
        staged.rename(cd / "conf.d")
        time.sleep(2.5)  # a heartbeat or two: the watcher notices and restarts
        (cd / "conf.d" / "app.toml").write_text(
            f'[template]\nsrc = "app.tmpl"\ndest = "{tmp_path / "out2"}"\nkeys = ["/app"]\n')
        wait_for(lambda: read(tmp_path / "out2") == "one\n", 20,
                 what=f"the edit reloaded\n{w.output()[-2000:]}")
        assert w.proc.poll() is None
    finally:
        code = w.stop()
    assert code == 0


def test_metrics_server_serves_again_after_an_unexpected_error() -> None:
    from confsync.ops.http import MetricsServer
    from confsync.ops.metrics import Metrics
    from tests.support.http_probe import probe

    metrics = Metrics()
    metrics.heartbeat()
    server = MetricsServer(metrics, "127.0.0.1:0")
    real = server._server.serve_forever
    calls = []

    def failing_once(poll_interval: float = 0.5) -> None:
        calls.append(poll_interval)
        if len(calls) == 1:
            raise RuntimeError("boom")
        real(poll_interval)

    server._server.serve_forever = failing_once  # type: ignore[method-assign]
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: probe(base, "/health")[0] == 200, 10, what="served again")
        assert len(calls) == 2
    finally:
        server.close()


# A user namespace of its own with an inotify budget of 0: as on a host where other programs of
# the same user hold all `max_user_instances`, without taking them from anyone else here.
NO_INOTIFY = ("unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', "sh")


def _no_inotify_available() -> bool:
    try:
        probe = subprocess.run([*NO_INOTIFY, sys.executable, "-c",
                                "import ctypes; raise SystemExit(ctypes.CDLL(None).inotify_init())"],
                               capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 255  # inotify_init() == -1: the budget is really 0


@pytest.mark.skipif(not _no_inotify_available(),
                    reason="needs unshare --user and a per-namespace inotify limit (Linux 5.11+)")
def test_without_inotify_the_daemon_polls_instead_of_exiting(tmp_path: Path) -> None:
    config, data, cd = _watched_file_backend(tmp_path, "a {{ getv('/app/v') }}\n")
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log", wrapper=NO_INOTIFY)
    try:
        wait_for(lambda: read(tmp_path / "out") == "a one\n", 20, what="first render")
        w.wait_log("conf.d/templates watcher: cannot watch with inotify")
        w.wait_log("file backend: cannot watch with inotify")
        data.write_text("app:\n  v: two\n")  # the file backend's data, seen by polling
        wait_for(lambda: read(tmp_path / "out") == "a two\n", 10, what="data change polled")
        (cd / "templates" / "app.tmpl").write_text("b {{ getv('/app/v') }}\n")
        wait_for(lambda: read(tmp_path / "out") == "b two\n", 10, what="template edit polled")
        assert w.proc.poll() is None
    finally:
        code = w.stop()
    assert code == 0, w.output()[-2000:]


def _inotify_watches(budget: int) -> tuple[str, ...]:
    """A user namespace whose user may hold `budget` inotify watches (max_user_watches)."""
    return ("unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo {budget} > /proc/sys/user/max_inotify_watches && exec "$@"', "sh")


@pytest.mark.skipif(not _no_inotify_available(),
                    reason="needs unshare --user and a per-namespace inotify limit (Linux 5.11+)")
def test_a_directory_made_once_inotify_watches_ran_out_is_polled_not_missed(
        tmp_path: Path) -> None:
    """Exactly the watches the start needs (conf.d, templates, the data file's directory),
    then templates/sub is made. watchdog could not watch it and only logged so, and an edit
    of a template there was never seen: no reload, nothing in /ready, for good. Now a new
    directory starts the watcher again, which polls when inotify cannot watch all of it."""
    config, data, cd = _watched_file_backend(
        tmp_path, '{% include "sub/inc.tmpl" ignore missing %}a {{ getv("/app/v") }}\n')
    out = tmp_path / "out"
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log",
                     wrapper=_inotify_watches(3))
    try:
        wait_for(lambda: read(out) == "a one\n", 20, what="first render")
        assert "cannot watch with inotify" not in w.output()  # the start fits the budget
        (cd / "templates" / "sub").mkdir()
        w.wait_log("configuration reloaded")  # the new directory, itself seen
        (cd / "templates" / "sub" / "inc.tmpl").write_text("included\n")
        wait_for(lambda: read(out) == "included\na one\n", 10,
                 what=f"the edit in the new directory\n{w.output()[-2000:]}")
        (cd / "templates" / "sub" / "inc.tmpl").write_text("again\n")  # and from now on
        wait_for(lambda: read(out) == "again\na one\n", 10, what="a second edit there")
        data.write_text("app:\n  v: two\n")  # the data is still followed
        wait_for(lambda: read(out) == "again\na two\n", 10, what="data change")
    finally:
        code = w.stop()
    assert code == 0, w.output()[-2000:]


_COUNT_INOTIFY = """
import os
from watchdog.events import FileSystemEventHandler
from confsync.fswatch import start_observer

def inotify_descriptors():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass  # the listing's own descriptor
    return count

before = inotify_descriptors()
for _ in range(100):
    observer = start_observer(FileSystemEventHandler(), [os.environ["WATCHED"]],
                              recursive=True, what="test")
    observer.stop()
    observer.join()
print(type(observer).__name__, before, inotify_descriptors())
"""


@pytest.mark.skipif(not _no_inotify_available(),
                    reason="needs unshare --user and a per-namespace inotify limit (Linux 5.11+)")
def test_falling_back_to_polling_leaks_no_inotify_instance(tmp_path: Path) -> None:
    """With no inotify watches left, watchdog's failed start left its inotify descriptor open
    about every other time (its reader thread could end before closing it): an instance of
    the user's budget and two pipes per restart of a watcher (a ConfigMap update, a new
    directory), for the daemon's life. The budget is now tried on an instance of our own."""
    done = subprocess.run([*_inotify_watches(0), sys.executable, "-c", _COUNT_INOTIFY],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "WATCHED": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PollingObserver", "0", "0"], done.stdout


def test_an_observer_that_cannot_start_falls_back_to_polling(tmp_path: Path) -> None:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.polling import PollingObserver

    from confsync.fswatch import start_observer

    class Exhausted:
        """watchdog's inotify observer on a host with no inotify instances left."""

        daemon = False

        def schedule(self, *args: object, **kwargs: object) -> None:
            raise OSError(errno.EMFILE, "inotify instance limit reached")

        def stop(self) -> None:
            self.stopped = True

    seen: list[str] = []

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            seen.append(str(event.src_path))

    observer = start_observer(Handler(), [str(tmp_path)], recursive=False, what="test",
                              native=Exhausted)
    try:
        assert isinstance(observer, PollingObserver) and observer.is_alive()
        (tmp_path / "new").write_text("x")
        wait_for(lambda: str(tmp_path / "new") in seen, 5, what="the polled event")
    finally:
        observer.stop()


def _configmap_watch(tmp_path: Path, first: str) -> tuple[Path, Callable[[str], None]]:
    """(config, publish): conf.d -> ..data/conf.d and templates -> ..data/templates of a
    ConfigMap volume, `watch.confdir` on, resource `app` rendering `<version> <value>` of
    /app/v = x (file backend) into tmp_path/out; `publish(version)` is an update as the
    kubelet's atomic writer makes it (`first` is published)."""
    cm = tmp_path / "cm"
    cm.mkdir()

    def publish(version: str) -> None:
        target = cm / f"..2026_{version}"
        write_resource(target, "app", f"{version} {{{{ getv('/app/v') }}}}\n",
                       f'dest = "{tmp_path / "out"}"\nkeys = ["/app"]')
        swap_data(cm, target)

    publish(first)
    (cm / "conf.d").symlink_to("..data/conf.d")
    (cm / "templates").symlink_to("..data/templates")
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: x\n")
    config = tmp_path / "confsync.toml"
    config.write_text(f'confdir = "{cm}"\nbackend = "file"\n[file]\npaths = ["{data}"]\n'
                      f'[watch]\nconfdir = true\nwait_min = "0s"\n')
    return config, publish


def test_conf_d_and_templates_mounted_as_a_configmap_follow_its_updates(tmp_path: Path) -> None:
    """conf.d -> ..data/conf.d and templates -> ..data/templates, ..data swapped to a new
    directory by each update (the kubelet's atomic writer), the old one deleted. The watcher
    followed the deleted directory and every update after the first start was missed."""
    config, publish = _configmap_watch(tmp_path, "one")
    dest = tmp_path / "out"
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(dest) == "one x\n", 20, what="first render")
        for version in ("two", "three"):
            publish(version)
            wait_for(functools.partial(reads, dest, f"{version} x\n"), 10,
                     what=f"the update to {version}\n{w.output()[-2000:]}")
    finally:
        code = w.stop()
    assert code == 0


def test_edits_are_loaded_while_another_file_under_templates_keeps_changing(
        tmp_path: Path) -> None:
    """Each edit under conf.d/templates moved the reload 0.5 s on, with no bound: a file there
    written more often than that (a generator's output, an editor's swap file) held every
    reload, a SIGHUP's too, for as long as it went on."""

    config, _, cd = _watched_file_backend(tmp_path, "{{ getv('/app/v') }}\n")
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log")
    done = threading.Event()

    def churn() -> None:
        noise = cd / "templates" / "notes.txt"
        for i in range(100):  # 20 s at most
            noise.write_text(f"{i}\n")
            if done.wait(0.2):
                return

    writer = threading.Thread(target=churn, daemon=True)
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n", 20, what="first render")
        writer.start()
        time.sleep(0.5)
        (cd / "templates" / "app.tmpl").write_text("v={{ getv('/app/v') }}\n")
        began = time.monotonic()
        wait_for(lambda: read(tmp_path / "out") == "v=one\n", 8,
                 what=f"the edit reloaded\n{w.output()[-2000:]}")
        assert time.monotonic() - began < 6
        (cd / "templates" / "app.tmpl").write_text("w={{ getv('/app/v') }}\n")
        w.signal(signal.SIGHUP)  # a SIGHUP is not put off by the edits either
        wait_for(lambda: read(tmp_path / "out") == "w=one\n", 3,
                 what=f"the SIGHUP's reload\n{w.output()[-2000:]}")
    finally:
        done.set()
        writer.join(timeout=5) if writer.is_alive() else None
        code = w.stop()
    assert code == 0


def _scrape(base: str, line: str) -> bool:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        return line in response.read().decode()


@pytest.mark.skipif(os.geteuid() != 0 or not _no_inotify_available(),
                    reason="needs root, unshare --user and a per-namespace inotify limit")
def test_a_watcher_that_cannot_restart_says_so_once_and_in_health(tmp_path: Path) -> None:
    """Polling (no inotify left), conf.d/ made unreadable to confsync (a deploy's wrong
    owner), and a directory made in templates/: the watcher starts again to watch it, and
    each start fails. That logged a traceback, and the warnings around it, every heartbeat:
    over 10,000 lines a day for as long as it lasted. Now once (then at most every 5
    minutes); /health names the part until it runs again."""
    config, _, cd = _watched_file_backend(tmp_path, "{{ getv('/app/v') }}\n")
    port = free_port()
    w = WatchProcess("--config", str(config), "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log", wrapper=NO_INOTIFY)
    confd = cd / "conf.d"
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n" and probe(base, "/health")[0] == 200,
                 20, what="first render")
        os.chown(confd, 65534, 65534)  # nobody: not mapped into the watcher's namespace
        confd.chmod(0o700)
        (cd / "templates" / "sub").mkdir()
        wait_for(lambda: "local-files" in probe(base, "/health")[1].get("failed_parts", {}),
                 10, what=f"/health naming the watcher\n{w.output()[-2000:]}")
        failing = w.output()
        time.sleep(4)  # four heartbeats, each a failed start
        later = w.output()[len(failing):]
        assert "conf.d/templates watcher" not in later and "Traceback" not in later, later
        assert failing.count("Traceback") <= 1, failing
        status, body = probe(base, "/health")
        assert status == 503 and "PermissionError" in body["failed_parts"]["local-files"]
        assert _scrape(base, 'confsync_part_failed{part="local-files"} 1.0')
        os.chown(confd, 0, 0)
        wait_for(lambda: probe(base, "/health")[0] == 200, 10,
                 what=f"/health once it runs again\n{w.output()[-2000:]}")
        assert _scrape(base, 'confsync_part_failed{part="local-files"} 0.0')
        (cd / "templates" / "app.tmpl").write_text("two {{ getv('/app/v') }}\n")
        wait_for(lambda: read(tmp_path / "out") == "two one\n", 10,
                 what=f"a template edit, followed again\n{w.output()[-2000:]}")
    finally:
        code = w.stop()
    assert code == 0, w.output()[-2000:]



def test_configmap_updates_are_no_dead_watcher_in_health(tmp_path: Path) -> None:
    """A ConfigMap update replaces conf.d's and templates' directory; one replaced while the
    watcher started on it (the path resolved, then deleted) was a start that failed: an ERROR
    with a traceback, and /health 503 naming `local-files` until the next heartbeat, at an
    update that came as the watcher (re)started (a liveness probe's failure). Updates come
    back to back here."""
    config, publish = _configmap_watch(tmp_path, "0")
    dest = tmp_path / "out"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--config", str(config), "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(dest) == "0 x\n" and probe(base, "/health")[0] == 200, 20,
                 what="first render, healthy")
        unhealthy: list[dict[str, object]] = []
        updating = threading.Event()
        updating.set()

        def watch_health() -> None:
            while updating.is_set():
                status, body = probe(base, "/health")
                if status != 200:
                    unhealthy.append(body)
                time.sleep(0.02)

        prober = threading.Thread(target=watch_health, daemon=True)
        prober.start()
        version = 0
        end = time.monotonic() + 5
        while time.monotonic() < end:  # (about a hundred a second)
            version += 1
            publish(str(version))
        updating.clear()
        prober.join(timeout=10)
        wait_for(functools.partial(reads, dest, f"{version} x\n"), 20,
                 what=f"the last update\n{w.output()[-2000:]}")
        assert unhealthy == []
        assert "cannot start it" not in w.output(), w.output()[-3000:]
    finally:
        code = w.stop()
    assert code == 0
