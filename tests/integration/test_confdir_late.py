"""A confdir whose files are not there yet at start: a mount point not mounted yet (an empty
directory), a `conf.d/` or `register.d/` config management has not filled yet.

Loading found nothing and exited 2, which the shipped units never restart
(RestartPreventExitStatus=2): the node stayed unmanaged for good. `watch` and `register` now
wait, say so, and start once the files are there; a confdir that does not exist (a typo) is
still exit 2 at once. Real etcd, real bind mounts (root), real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.register import RegisterProcess, published, write_registration

TEMPLATE = "v={{ getv('/k/v') }}\n"


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Bind mounts a test makes; each unmounted after it."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _bind(source: Path, point: Path, mounts: list[Path]) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount")
    done = subprocess.run(["mount", "--bind", str(source), str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode()}")
    mounts.append(point)


def test_watch_on_a_mount_point_not_mounted_yet_starts_once_it_is(
        etcd: EtcdMember, tmp_path: Path, prefix: str, mounts: list[Path],
        watchers: list[WatchProcess]) -> None:
    """As the shipped unit runs it: `--config /etc/confsync/confsync.toml`, the config and
    the confdir both on the mount."""
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    point, volume, dest = tmp_path / "confsync", tmp_path / "volume", tmp_path / "app.conf"
    point.mkdir()
    write_resource(volume, "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    (volume / "confsync.toml").write_text(
        f'confdir = "{point}"\nprefix = "{prefix}"\n[etcd]\nendpoints = ["{etcd.endpoint}"]\n')
    watch = WatchProcess("--config", str(point / "confsync.toml"), log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log(f"config file {point / 'confsync.toml'} is not there and {point} is empty")
    assert watch.proc.poll() is None, watch.output()[-2000:]
    _bind(volume, point, mounts)
    wait_for(lambda: read(dest) == "v=1\n", what=f"rendered; log:\n{watch.output()[-2000:]}")
    # The lock is the mounted confdir's: a second `watch` on it is refused, naming the first.
    second = confsync("watch", "--confdir", str(point), "--endpoints", etcd.endpoint,
                      timeout=20)
    assert second.returncode == 2 and "already kept by another" in second.stderr, \
        second.stderr
    assert watch.stop() == 0, watch.output()[-2000:]


def test_watch_on_an_empty_confdir_locks_and_loads_the_mounted_one(
        etcd: EtcdMember, tmp_path: Path, prefix: str, mounts: list[Path],
        watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "3")
    point, volume, dest = tmp_path / "confsync", tmp_path / "volume", tmp_path / "app.conf"
    point.mkdir()
    write_resource(volume, "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    watch = WatchProcess("--confdir", str(point), "--endpoints", etcd.endpoint, "--prefix",
                         prefix, log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log(f"confdir {point} is empty (a mount not made yet?)")
    assert watch.proc.poll() is None, watch.output()[-2000:]
    _bind(volume, point, mounts)
    wait_for(lambda: read(dest) == "v=3\n", what=f"rendered; log:\n{watch.output()[-2000:]}")
    # Locked anew at start (the mount point under it was): not found moved later.
    watch.wait_log("watching")
    assert "send SIGHUP to load its files" not in watch.output()
    assert watch.stop() == 0, watch.output()[-2000:]


def test_watch_with_conf_d_not_filled_yet_starts_once_a_resource_is_there(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "2")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "conf.d" / ".gitkeep").touch()
    watch = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                         prefix, log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log("conf.d is empty")
    assert watch.proc.poll() is None, watch.output()[-2000:]
    write_resource(confdir, "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    wait_for(lambda: read(dest) == "v=2\n", what=f"rendered; log:\n{watch.output()[-2000:]}")
    assert watch.stop() == 0


def test_a_stop_while_waiting_exits_0_and_a_missing_confdir_is_still_exit_2(
        etcd: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    (tmp_path / "empty").mkdir()
    watch = WatchProcess("--confdir", str(tmp_path / "empty"), "--endpoints", etcd.endpoint,
                         log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log("is empty")
    watch.signal(signal.SIGTERM)
    assert watch.proc.wait(timeout=5) == 0
    typo = confsync("watch", "--confdir", str(tmp_path / "no-such-dir"), "--endpoints",
                    etcd.endpoint, timeout=20)
    assert typo.returncode == 2 and "conf.d directory does not exist" in typo.stderr, \
        typo.stderr


def test_register_with_register_d_not_filled_yet_registers_once_it_is(
        etcd: EtcdMember, tmp_path: Path, prefix: str, procs: list[RegisterProcess]) -> None:
    confdir = tmp_path / "cd"
    (confdir / "register.d").mkdir(parents=True)
    service = socket.create_server(("127.0.0.1", 0))
    try:
        reg = RegisterProcess(confdir, etcd.endpoint, "--prefix", prefix, "--hostname",
                              "node-a", log=tmp_path / "r.log")
        procs.append(reg)
        wait_for(lambda: "register.d is empty" in reg.output(), what="the wait said")
        assert reg.proc.poll() is None, reg.output()[-2000:]
        write_registration(confdir, "web", (
            f'service = "web"\nid = "web-1"\nport = {service.getsockname()[1]}\n'
            'address = "127.0.0.1"\nttl = "5s"\ndrain = "100ms"\n'
            '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n'))
        etcd_client = client(etcd.endpoint)
        wait_for(lambda: published(etcd_client, prefix + "/services/web/instances/web-1")
                 is not None, timeout=10, what=f"registered; log:\n{reg.output()[-2000:]}")
        assert reg.stop() == 0, reg.output()[-2000:]
    finally:
        service.close()


def test_a_deploy_writing_conf_d_before_its_templates_is_waited_out_not_exit_2(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """Config management fills an empty confdir file by file: the wait ended at the first
    file (conf.d/app.toml), its template not there yet: no valid resource, exit 2, never
    restarted. Started once the confdir has been quiet for a moment."""
    client(etcd.endpoint).put(prefix + "/k/v", "4")
    confdir, dest = tmp_path / "cd", tmp_path / "app.conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    watch = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                         prefix, log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log("conf.d is empty")
    (confdir / "conf.d" / "app.toml").write_text(
        f'[template]\nsrc = "app.tmpl"\ndest = "{dest}"\nkeys = ["/k"]\n')
    time.sleep(1.5)  # (the wait looks every second: it has seen conf.d filled)
    (confdir / "templates" / "app.tmpl").write_text(TEMPLATE)
    wait_for(lambda: watch.proc.poll() is not None or read(dest) == "v=4\n", timeout=10,
             what=f"rendered; log:\n{watch.output()[-2000:]}")
    assert watch.proc.poll() is None, watch.output()[-2000:]
    assert read(dest) == "v=4\n"
    assert watch.stop() == 0, watch.output()[-2000:]


def test_a_config_file_at_its_default_place_on_the_late_mount_is_read(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """No --config: confsync.toml is read from its default place if it exists. With the
    confdir a mount not made yet, it did not at start; the wait then loaded conf.d and ran
    on the built-in defaults (etcd on 127.0.0.1:2379, no prefix), never what the file on the
    mount said. The settings are read again once the confdir is there."""
    client(etcd.endpoint).put(prefix + "/k/v", "5")
    point, dest, site = tmp_path / "confsync", tmp_path / "app.conf", tmp_path / "site"
    point.mkdir()
    site.mkdir()
    # (DEFAULT_CONFIG is /etc/confsync/confsync.toml: moved here for this process only)
    (site / "sitecustomize.py").write_text(
        "from pathlib import Path\nimport confsync.settings as s\n"
        f"s.DEFAULT_CONFIG = Path({str(point / 'confsync.toml')!r})\n")
    watch = WatchProcess("--confdir", str(point), log=tmp_path / "w.log",
                         env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}"})
    watchers.append(watch)
    watch.wait_log(f"confdir {point} is empty")
    (point / "confsync.toml").write_text(
        f'prefix = "{prefix}"\n[etcd]\nendpoints = ["{etcd.endpoint}"]\n')
    write_resource(point, "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    wait_for(lambda: read(dest) == "v=5\n", timeout=10,
             what=f"rendered from the file's etcd and prefix; log:\n{watch.output()[-2000:]}")
    assert watch.stop() == 0, watch.output()[-2000:]
