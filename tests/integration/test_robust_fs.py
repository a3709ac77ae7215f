"""`confsync watch` over months: what the filesystem under it does (files replaced by garbage,
its working directory deleted, dests that are links, directories that go away), with a real
daemon and the file backend. Each case must end with the daemon alive, honest in /ready, and
the files converged once the fault is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_server import free_port
from tests.support.http_probe import probe


def _start(tmp_path: Path, confdir: Path, data: Path, *extra: str, cwd: Path | None = None,
           env: dict[str, str] | None = None,
           wrapper: tuple[str, ...] = ()) -> tuple[WatchProcess, str]:
    port = free_port()
    w = WatchProcess("--confdir", str(confdir), "--backend", "file", "--file", str(data),
                     "--wait-min", "0", "--metrics-address", f"127.0.0.1:{port}", *extra,
                     log=tmp_path / "watch.log", cwd=cwd, env=env, wrapper=wrapper)
    return w, f"http://127.0.0.1:{port}"


def test_non_utf8_template_or_resource_file_is_refused_not_a_loop_error(tmp_path: Path) -> None:
    """A template or conf.d file replaced by bytes that are not UTF-8 is a broken file like any
    other: the reload is refused with a reason and the running set goes on. It used to escape
    as a UnicodeDecodeError into the loop ("unexpected error"; five in a minute: exit 70), and
    left systemd's RELOADING=1 unanswered."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "v1 {{ getv('/app/v') }}\n", f'dest = "{dest}"\nkeys = ["/app"]')
    template, resource = confdir / "templates" / "app.tmpl", confdir / "conf.d" / "app.toml"
    good_resource = resource.read_bytes()
    w, base = _start(tmp_path, confdir, data)
    try:
        wait_for(lambda: read(dest) == "v1 one\n", what="first render")
        for broken in (template, resource):
            good = broken.read_bytes()
            for attempt in range(1, 4):
                broken.write_bytes(b"\xff\xfe" + good)
                w.signal(signal.SIGHUP)
                w.wait_log("not UTF-8", count=attempt + (3 if broken is resource else 0))
            broken.write_bytes(good)
        assert "watch loop: unexpected error" not in w.output()
        assert w.output().count("configuration reload refused") == 6
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        template.write_text("v2 {{ getv('/app/v') }}\n")
        assert resource.read_bytes() == good_resource
        w.signal(signal.SIGHUP)
        wait_for(lambda: read(dest) == "v2 one\n", what="the fixed set applied")
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0


def test_watch_survives_its_working_directory_deleted_and_recreated(tmp_path: Path) -> None:
    """Relative paths (confdir, data file, dest) mean the directory confsync started in, by
    name: deleting it (a package upgrade replacing it) must not turn each SIGHUP into an
    unexpected loop error (os.getcwd() fails), nor, once it is recreated, leave confsync
    writing into the deleted one."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    write_resource(work / "cd", "app", "v {{ getv('/app/v') }}\n",
                   'dest = "out/app.conf"\nkeys = ["/app"]')
    (work / "data.yaml").write_text("app:\n  v: one\n")
    saved = tmp_path / "saved"
    shutil.copytree(work, saved)
    w, base = _start(tmp_path, Path("cd"), Path("data.yaml"), cwd=work,
                     env={"CONFSYNC_WATCH_INTERVAL": "1s"})
    try:
        wait_for(lambda: read(work / "out" / "app.conf") == "v one\n", what="first render")
        shutil.rmtree(work)
        for sent in range(1, 7):  # more than the loop's error limit (5 in a minute)
            w.signal(signal.SIGHUP)
            w.wait_log("configuration reload refused", count=sent)
        shutil.copytree(saved, work)  # the directory is back, under the same name
        (work / "data.yaml").write_text("app:\n  v: two\n")
        w.signal(signal.SIGHUP)
        wait_for(lambda: read(work / "out" / "app.conf") == "v two\n", timeout=10,
                 what="the new data in the recreated directory")
        assert "watch loop: unexpected error" not in w.output()
        assert w.proc.poll() is None
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
    finally:
        assert w.stop() == 0
    assert os.path.exists(work / "out" / "app.conf")


def test_a_dest_that_is_a_link_keeps_the_link_and_updates_its_target(tmp_path: Path) -> None:
    """/etc/app/app.conf -> /srv/conf/app.conf (a config repository, a package's alternative):
    the target is what gets written, checked on its staged copy, rolled back after a failed
    reload and retried; the link stays a link throughout. Before, the rename replaced the link
    with a plain file and the target went stale."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    etc, srv = tmp_path / "etc", tmp_path / "srv"
    etc.mkdir()
    srv.mkdir()
    target, link = srv / "app.conf", etc / "app.conf"
    target.write_text("old\n")
    link.symlink_to(Path("..") / "srv" / "app.conf")  # relative, as `ln -s` makes them
    flag = tmp_path / "reload-fails"
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "v {{ getv('/app/v') }}\n",
                   f'dest = "{link}"\nkeys = ["/app"]\n'
                   f'check_cmd = ["sh", "-c", "test ! -L \\"$0\\" && grep -q \'^v \' \\"$0\\"", '
                   f'"{{{{src}}}}"]\n'
                   f'reload_cmd = ["sh", "-c", "test ! -e {flag}"]')
    w, base = _start(tmp_path, confdir, data)
    try:
        wait_for(lambda: read(target) == "v one\n", what="the link's target written")
        assert link.is_symlink() and read(link) == "v one\n"
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        flag.touch()
        data.write_text("app:\n  v: two\n")
        w.wait_log("previous file restored")
        assert link.is_symlink() and read(target) == "v one\n"
        wait_for(lambda: probe(base, "/ready")[0] == 503, what="not ready")
        flag.unlink()
        wait_for(lambda: read(target) == "v two\n", what="retried into the target")
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready again")
        assert link.is_symlink() and os.readlink(link) == "../srv/app.conf"
        assert sorted(p.name for p in etc.iterdir()) == ["app.conf"]
        assert sorted(p.name for p in srv.iterdir()) == ["app.conf"]
    finally:
        assert w.stop() == 0


def _dest_under_a_mount(tmp_path: Path) -> tuple[Path, Path, Path, Path, tuple[str, ...]]:
    """(data file, confdir, dest, the file mounted over dest, a command prefix that runs
    confsync in a mount namespace of its own where that file is bind-mounted over dest).
    The namespace is private: nothing reaches the host's mounts. Skips without root."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs unshare and nsenter (util-linux)")
    etc, host = tmp_path / "etc", tmp_path / "host"
    etc.mkdir()
    host.mkdir()
    dest, mounted = etc / "app.conf", host / "app.conf"
    dest.write_text("under the mount\n")
    mounted.write_text("the host's file\n")
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "v {{ getv('/app/v') }}\n", f'dest = "{dest}"\nkeys = ["/app"]')
    namespace = ("unshare", "-m", "--propagation", "private", "sh", "-c",
                 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(mounted), str(dest))
    return data, confdir, dest, mounted, namespace


def test_check_and_once_say_a_dest_that_is_a_mount_point_cannot_be_replaced(
        tmp_path: Path) -> None:
    """`confsync check` used to pass (exit 4, "would change") for a dest `once` cannot replace;
    it fails that resource with the same reason now. A file already equal needs no rename."""
    data, confdir, dest, mounted, namespace = _dest_under_a_mount(tmp_path)

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*namespace, sys.executable, "-m", "confsync", command,
                               "--confdir", str(confdir), "--backend", "file", "--file",
                               str(data)], capture_output=True, text=True, timeout=60, cwd=REPO)

    for command in ("check", "once"):
        done = run(command)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert f"cannot rename into {dest}: it is a mount point" in done.stdout + done.stderr
    assert read(mounted) == "the host's file\n" and read(dest) == "under the mount\n"
    mounted.write_text("v one\n")
    assert run("check").returncode == 0 and run("once").returncode == 0
    assert sorted(p.name for p in dest.parent.iterdir()) == ["app.conf"]


def test_a_dest_that_is_a_mount_point_says_so_and_is_retried_until_the_mount_is_fixed(
        tmp_path: Path) -> None:
    """One file bind-mounted over dest (`docker run -v ./haproxy.cfg:/etc/haproxy/haproxy.cfg`)
    cannot be replaced by a rename (EBUSY). The error used to be "cannot rename into ...:
    Device or resource busy"; now it says the dest is a mount point and what to do, neither
    file is touched, /ready says failing, and the retry installs the file once the operator
    mounts it differently (here: unmounts it), with no data change."""
    data, confdir, dest, mounted, namespace = _dest_under_a_mount(tmp_path)
    w, base = _start(tmp_path, confdir, data, "--log-level", "debug",  # (the retry's line)
                     wrapper=namespace)
    try:
        w.wait_log(f"cannot rename into {dest}: it is a mount point", count=2)  # and a retry
        assert "Mount its directory" in w.output()
        status, body = probe(base, "/ready")
        assert status == 503 and "failing: app" in body["reasons"], body
        assert read(mounted) == "the host's file\n" and read(dest) == "under the mount\n"
        subprocess.run(["nsenter", "-t", str(w.proc.pid), "-m", "umount", str(dest)],
                       check=True)  # the operator fixes the mount
        wait_for(lambda: read(dest) == "v one\n", timeout=45,
                 what=f"retried after the mount is gone\n{w.output()[-2000:]}")
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        assert read(mounted) == "the host's file\n"
        assert sorted(p.name for p in dest.parent.iterdir()) == ["app.conf"]  # nothing staged
    finally:
        assert w.stop() == 0


def test_an_include_edited_on_disk_waits_for_the_reload_like_its_main_template(
        tmp_path: Path) -> None:
    """The running set renders its templates as they were when it was loaded. An include
    that no render had needed yet was read from disk at its first use: an edit waiting for
    its SIGHUP (here a broken one) failed a data change's render, beside the old main."""
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "{% if exists('/app/x') %}{% include 'part.tmpl' %}"
                   "{% endif %}v {{ getv('/app/v') }}\n", f'dest = "{dest}"\nkeys = ["/app"]')
    part = confdir / "templates" / "part.tmpl"
    part.write_text("part one\n")
    w, base = _start(tmp_path, confdir, data)
    try:
        wait_for(lambda: read(dest) == "v one\n", what="first render")
        part.write_text("{% broken %}\n")  # edited, no SIGHUP yet
        data.write_text("app:\n  v: two\n  x: on\n")
        wait_for(lambda: read(dest) == "part one\nv two\n",
                 what=f"the include as loaded\n{w.output()[-2000:]}")
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        w.signal(signal.SIGHUP)  # the edit is judged as a set: refused, the running set stays
        w.wait_log("configuration reload refused")
        assert "Encountered unknown tag 'broken'" in w.output()
        part.write_text("part two\n")
        w.signal(signal.SIGHUP)
        wait_for(lambda: read(dest) == "part two\nv two\n", what="the fixed include")
    finally:
        assert w.stop() == 0


def test_file_backend_data_directory_deleted_and_recreated(tmp_path: Path) -> None:
    """`rm -rf /etc/data && mkdir /etc/data && cp ...`: the watch's emitter for the deleted
    directory stopped with it, so the daemon went deaf for good, /ready still 200. Now the
    loss is reported and the directory watched again once it is back."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / "data.yaml"
    data.write_text("app:\n  v: one\n")
    dest = tmp_path / "out.conf"
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "v {{ getv('/app/v') }}\n", f'dest = "{dest}"\nkeys = ["/app"]')
    w, base = _start(tmp_path, confdir, data)
    try:
        wait_for(lambda: read(dest) == "v one\n", what="first render")
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        shutil.rmtree(data_dir)
        wait_for(lambda: probe(base, "/ready")[0] == 503, what="the lost watch reported")
        assert "was deleted" in str(probe(base, "/ready")[1])
        data_dir.mkdir()
        data.write_text("app:\n  v: two\n")
        wait_for(lambda: read(dest) == "v two\n", what="the recreated directory read")
        data.write_text("app:\n  v: three\n")
        wait_for(lambda: read(dest) == "v three\n", what="and watched again")
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready again")
    finally:
        assert w.stop() == 0


def test_a_default_config_file_that_vanishes_is_not_replaced_by_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with /etc/confsync/confsync.toml found at its default place (no --config): a
    SIGHUP while it is gone used to load the built-in defaults (here: the etcd backend on
    127.0.0.1 instead of the file backend) as if that were the configuration."""
    from confsync import settings as settings_module
    from confsync.daemon import Daemon
    from confsync.settings import load_settings

    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "v {{ getv('/app/v') }}\n",
                   f'dest = "{tmp_path / "out.conf"}"\nkeys = ["/app"]')
    config = tmp_path / "confsync.toml"
    config.write_text(f'backend = "file"\n[file]\npaths = ["{data}"]\n')
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG", config)
    monkeypatch.delenv("CONFSYNC_CONFIG", raising=False)
    cli = {"confdir": str(confdir)}
    settings = load_settings(cli, environ={})
    assert settings.config_path == config
    daemon = Daemon(settings, cli)
    daemon.follower.start()
    try:
        config.unlink()
        assert daemon.reload_config() is False
        assert daemon.pending is None and daemon.state.settings is settings
    finally:
        daemon.follower.stop()
        daemon.follower.join(timeout=10)
        daemon.store.close()
