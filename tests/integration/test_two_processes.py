"""Two confsync processes on one confdir (confsync/confdir_lock.py): a second `watch` refuses
to start, naming the first; `once` beside a `watch` writes nothing; a `watch` started while a
`once` runs waits for it; `check` runs beside either; confdirs of their own may share a dest
directory; two `register` of one register.d name each other. Real processes, a real etcd."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.pidns import AS_INIT, pid_namespaces_work
from tests.support.register import RegisterProcess, published, write_registration


def _resource(confdir: Path, dest: Path, prefix: str, extra: str = "") -> None:
    write_resource(confdir, "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\nprefix = "{prefix}"\n{extra}')


def _watch(confdir: Path, etcd: EtcdMember, log: Path, *args: str) -> WatchProcess:
    return WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                        "--wait-min", "0", *args, log=log)


def test_a_second_watch_on_the_same_confdir_refuses_naming_the_first(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """A debug `watch` beside the systemd one ran, and both wrote and reloaded every file:
    each reload twice, and a flip-flop of the dest between them as soon as their views
    differed (here: another prefix), both saying ready."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    c.put(f"{prefix}-debug{prefix}/app/port", "9090")  # (the global prefix comes first)
    confdir, dest = tmp_path / "cd", tmp_path / "out" / "app.conf"
    dest.parent.mkdir()
    reloads = tmp_path / "reloads"
    _resource(confdir, dest, prefix, f'reload_cmd = ["sh", "-c", "echo >> {reloads}"]')
    first = _watch(confdir, etcd, tmp_path / "first.log")
    watchers.append(first)
    wait_for(lambda: read(dest) == "port 8080\n", what="the first watch's render")
    (tmp_path / "link").symlink_to(confdir)  # another path to the same directory
    second = WatchProcess("--confdir", str(tmp_path / "link"), "--endpoints", etcd.endpoint,
                          "--prefix", f"{prefix}-debug", "--wait-min", "0",
                          log=tmp_path / "second.log")
    watchers.append(second)
    try:
        code = second.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 2, f"the second watch runs beside the first:\n{second.output()[-2000:]}"
    assert f"pid {first.proc.pid}: " in second.output(), second.output()
    assert "already kept by another `confsync watch`" in second.output(), second.output()
    c.put(f"{prefix}/app/port", "8081")
    wait_for(lambda: read(dest) == "port 8081\n", what="the first watch goes on")
    time.sleep(0.5)
    assert read(dest) == "port 8081\n"
    assert read(reloads).count("\n") == 2, "one reload per change, by the first alone"
    assert first.proc.poll() is None


def test_once_beside_a_running_watch_writes_nothing_and_says_why(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """`once` by hand beside the daemon wrote and reloaded the same files (a reload racing the
    daemon's, a rollback over its newer file, the running copy dropped under its reload)."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    c.put(f"{prefix}-other{prefix}/app/port", "9090")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    _resource(confdir, dest, prefix)
    w = _watch(confdir, etcd, tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(dest) == "port 8080\n", what="the watch's render")
    before = os.stat(dest)
    done = confsync("once", "--confdir", str(confdir), "--endpoints", etcd.endpoint,
                    "--prefix", f"{prefix}-other")
    assert done.returncode == 2, done.stderr
    assert f"pid {w.proc.pid}: " in done.stderr and "`once` would" in done.stderr, done.stderr
    assert read(dest) == "port 8080\n"
    assert os.stat(dest).st_ino == before.st_ino, "not even rewritten"
    # `check` writes nothing: it runs beside the daemon.
    checked = confsync("check", "--confdir", str(confdir), "--endpoints", etcd.endpoint)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert w.proc.poll() is None


def test_check_beside_a_watch_mid_reload_names_it_and_not_a_stopped_confsync(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """`check` while the daemon's reload runs found the running copy and said "its reload is
    owed (confsync stopped before it was done); `once` or `watch` will reload it": confsync
    had not stopped, and `once` refuses beside a `watch`."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    reloading, live = tmp_path / "reloading", tmp_path / "live"
    _resource(confdir, dest, prefix, f'reload_cmd = ["sh", "-c", "touch {reloading}; '
              f'sleep 2; cp {dest} {live}; rm {reloading}"]')
    w = _watch(confdir, etcd, tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(live) == "port 8080\n", what="the first reload")
    c.put(f"{prefix}/app/port", "8081")
    wait_for(reloading.exists, what="the second reload under way")
    checked = confsync("check", "--confdir", str(confdir), "--endpoints", etcd.endpoint)
    assert reloading.exists(), "the check ran while the reload did"
    assert checked.returncode == 4, checked.stdout + checked.stderr  # not live yet
    assert "confsync stopped" not in checked.stdout, checked.stdout
    assert f"the running `confsync watch` (pid {w.proc.pid}: " in checked.stdout, checked.stdout
    wait_for(lambda: read(live) == "port 8081\n", what="the reload done")


def _once_in_its_check(confdir: Path, dest: Path, prefix: str, etcd: EtcdMember, tmp_path: Path,
                       seconds: float, stderr: int | None = subprocess.DEVNULL
                       ) -> subprocess.Popen[str]:
    """A `once` whose check_cmd takes `seconds`, returned once it is in that check (it holds
    the confdir's shared lock meanwhile)."""
    checking = tmp_path / "checking"
    _resource(confdir, dest, prefix,
              f'check_cmd = ["sh", "-c", "touch {checking}; sleep {seconds:g}"]')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    once = subprocess.Popen([sys.executable, "-m", "confsync", "once", "--confdir", str(confdir),
                             "--endpoints", etcd.endpoint], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        wait_for(checking.exists, timeout=10, what="`once` in its check")
    except BaseException:
        once.kill()
        once.wait()
        raise
    return once


def test_a_watch_started_while_once_runs_waits_for_it(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """A unit starting while a cron `once` runs must not refuse (exit 2 is not restarted):
    it waits for the `once` to finish, then starts."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    once = _once_in_its_check(confdir, dest, prefix, etcd, tmp_path, 1.5, subprocess.PIPE)
    try:
        w = _watch(confdir, etcd, tmp_path / "watch.log")
        watchers.append(w)
        w.wait_log(f"waiting for `confsync once` or a stopping `confsync watch` (pid {once.pid}: ",
                   timeout=10)
        assert once.wait(timeout=15) == 0, once.stderr.read() if once.stderr else ""
        c.put(f"{prefix}/app/port", "8081")
        wait_for(lambda: read(dest) == "port 8081\n", what="the watch started after the once")
        assert w.proc.poll() is None
    finally:
        if once.poll() is None:
            once.kill()
        once.wait()
        if once.stderr:
            once.stderr.close()


@pytest.mark.skipif(not pid_namespaces_work(), reason="needs unshare --pid (root)")
def test_a_watch_in_its_own_pid_namespace_waits_for_a_once_it_cannot_see(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """/proc/locks hides the locks of processes outside the reader's PID namespace: a `watch`
    in a container, starting while a `once` of another container held the confdir, found no
    holder, took it for another daemon and exited 2 (not restarted). The kernel tells a
    shared holder from an exclusive one; the watch waits."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    once = _once_in_its_check(confdir, dest, prefix, etcd, tmp_path, 1.5)
    try:
        w = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--wait-min",
                         "0", log=tmp_path / "watch.log", wrapper=AS_INIT)
        watchers.append(w)
        w.wait_log("a stopping `confsync watch` (another process)", timeout=10)
        assert once.wait(timeout=15) == 0
        c.put(f"{prefix}/app/port", "8081")
        wait_for(lambda: read(dest) == "port 8081\n", what="the watch started after the once")
        init = psutil.Process(w.proc.pid).children()[0]  # (unshare passes no SIGTERM on)
        init.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=10) == 0
    finally:
        once.kill()
        once.wait()


def test_a_watch_stopped_while_waiting_for_once_exits_0(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    once = _once_in_its_check(confdir, dest, prefix, etcd, tmp_path, 3)
    try:
        w = _watch(confdir, etcd, tmp_path / "watch.log")
        watchers.append(w)
        w.wait_log("waiting for `confsync once`", timeout=10)
        w.signal(signal.SIGTERM)
        assert w.proc.wait(timeout=5) == 0
        assert once.poll() is None, "it did not wait for the once to end"
    finally:
        once.kill()
        once.wait()


def test_two_confdirs_may_write_into_one_directory(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """The lock is the confdir's, not the dest directory's: /etc/haproxy/a.cfg from one
    confdir and /etc/haproxy/b.cfg from another is a legitimate set-up."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b"):
        _resource(tmp_path / name, out / f"{name}.conf", prefix)
        w = _watch(tmp_path / name, etcd, tmp_path / f"{name}.log")
        watchers.append(w)
    for name in ("a", "b"):
        wait_for(lambda n=name: read(out / f"{n}.conf") == "port 8080\n", what=f"{name}.conf")
    assert all(w.proc.poll() is None for w in watchers)


def test_the_lock_is_the_watchs_own_on_a_read_only_confdir(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """A read-only confdir (a ConfigMap mount) is locked all the same; the exec child never
    holds it, so a watch killed with SIGKILL while its child lives is followed by a new one."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    _resource(confdir, dest, prefix)
    for path in (confdir / "conf.d", confdir / "templates", confdir):
        path.chmod(0o555)
    child_pid = tmp_path / "child.pid"
    first = _watch(confdir, etcd, tmp_path / "first.log", "--exec",
                   f"sh -c 'echo $$ > {child_pid}; exec sleep 30'")
    watchers.append(first)
    try:
        wait_for(lambda: read(child_pid).strip().isdigit(), what="the exec child")
        child = int(read(child_pid))
        fds = [os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")]
        assert str(confdir) not in fds, fds
        first.proc.kill()
        first.proc.wait()
        second = _watch(confdir, etcd, tmp_path / "second.log")
        watchers.append(second)
        c.put(f"{prefix}/app/port", "8081")
        wait_for(lambda: read(dest) == "port 8081\n", what="the second watch's render")
        assert second.proc.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    finally:
        confdir.chmod(0o755)


def test_a_sighup_to_a_confdir_another_watch_keeps_is_refused(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """The lock follows the confdir a reload switches to: `confdir` edited to one another
    daemon keeps made two daemons on it; now the reload is refused naming the other, and a
    switch elsewhere frees the old confdir for another daemon."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "c"):
        _resource(tmp_path / name, out / f"{name}.conf", prefix)
    config = tmp_path / "confsync.toml"
    config.write_text(f'confdir = "{tmp_path / "a"}"\n')
    moving = WatchProcess("--config", str(config), "--endpoints", etcd.endpoint, "--wait-min",
                          "0", log=tmp_path / "moving.log")
    watchers.append(moving)
    other = _watch(tmp_path / "b", etcd, tmp_path / "b.log")
    watchers.append(other)
    wait_for(lambda: read(out / "a.conf") and read(out / "b.conf"), what="both renders")
    config.write_text(f'confdir = "{tmp_path / "b"}"\n')
    moving.signal(signal.SIGHUP)
    moving.wait_log("configuration reload refused")
    assert f"is kept by another confsync process (pid {other.proc.pid}: " in moving.output()
    c.put(f"{prefix}/app/port", "8081")
    wait_for(lambda: read(out / "a.conf") == "port 8081\n", what="the running set goes on")
    config.write_text(f'confdir = "{tmp_path / "c"}"\n')
    moving.signal(signal.SIGHUP)
    moving.wait_log("configuration reloaded")
    wait_for(lambda: read(out / "c.conf") == "port 8081\n", what="the switch to c")
    after = _watch(tmp_path / "a", etcd, tmp_path / "a.log")  # a is free again
    watchers.append(after)
    c.put(f"{prefix}/app/port", "8082")
    for name in ("a", "b", "c"):
        wait_for(lambda n=name: read(out / f"{n}.conf") == "port 8082\n", what=f"{name}.conf")
    assert all(w.proc.poll() is None for w in watchers)


def test_two_registrars_of_one_register_d_name_each_other(
        etcd: EtcdMember, prefix: str, tmp_path: Path, backend: HTTPBackend,
        procs: list[RegisterProcess]) -> None:
    """A second `register` with the same config on the same host: the second takes the key
    over and the first backs off (no flip-flop, /ready 503 on the first), but the first said
    "two hosts share a host name (a cloned image?)", sending the operator to look for a
    clone; now each names the other process."""
    from tests.support.http_probe import ready

    confdir = tmp_path / "conf"
    write_registration(confdir, "web", f'service = "web"\nport = {backend.port}\nid = "web-1"\n'
                       'ttl = "3s"\ndrain = "0s"\n[[check]]\ntype = "tcp"\n'
                       'interval = "100ms"\nrise = 1\n')
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    metrics = free_port()
    first = RegisterProcess(confdir, etcd.endpoint, "--prefix", prefix, "--hostname", "n1",
                            "--metrics-address", f"127.0.0.1:{metrics}",
                            log=tmp_path / "first.log")
    procs.append(first)
    wait_for(lambda: published(c, key) is not None, timeout=15, what="the first registered")
    lease = c.get(key)[1].lease_id
    second = RegisterProcess(confdir, etcd.endpoint, "--prefix", prefix, "--hostname", "n1",
                             log=tmp_path / "second.log")
    procs.append(second)
    wait_for(lambda: c.get(key)[1].lease_id not in (0, lease), timeout=15,
             what="the second took the key over")
    wait_for(lambda: f"pid {second.proc.pid}: " in first.output(), timeout=10,
             what=f"the first names the second:\n{first.output()[-2000:]}")
    assert "another `confsync register` on this host reading the same register.d" \
        in first.output()
    assert "cloned image" not in first.output()
    status, body = ready(metrics)
    assert status == 503 and any(f"pid {second.proc.pid}: " in r for r in body["reasons"]), body
    assert f"pid {first.proc.pid}: " in second.output(), second.output()[-2000:]


def test_a_watch_started_while_another_stops_its_exec_child_waits_for_it(
        etcd: EtcdMember, prefix: str, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """A stopping `watch` waits out its exec child's stop_timeout; a `watch` started then (a
    restart that does not wait, a DaemonSet's next pod) exited 2, which the units do not
    restart. Now the stopping one holds its lock shared, and the new one waits for it."""
    c = client(etcd.endpoint)
    c.put(f"{prefix}/app/port", "8080")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    _resource(confdir, dest, prefix)
    child, ignoring = tmp_path / "child.py", tmp_path / "ignoring"
    child.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     f"open({str(ignoring)!r}, 'w').close()\n"
                     "for _ in range(300):\n    time.sleep(0.1)\n")
    old = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--wait-min",
                       "0", "--exec", f"{sys.executable} {child}", log=tmp_path / "old.log",
                       env={"CONFSYNC_EXEC_STOP_TIMEOUT": "3s"})
    watchers.append(old)
    wait_for(lambda: read(dest) == "port 8080\n", what="the first watch's render")
    wait_for(ignoring.exists, what="the exec child ignoring SIGTERM")
    old.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "confsync stopped" in old.output(), what="the first watch stopping")
    new = _watch(confdir, etcd, tmp_path / "new.log")
    watchers.append(new)
    new.wait_log("a stopping `confsync watch`", timeout=10)
    assert new.proc.poll() is None, new.output()
    assert old.proc.wait(timeout=15) == 128 + signal.SIGKILL  # (its child, at stop_timeout)
    c.put(f"{prefix}/app/port", "8081")
    wait_for(lambda: read(dest) == "port 8081\n", what="the new watch, started after the old")
