"""`~` and `~user` in `confdir` and the file backend's `paths`, as an operator writes them.

`~` (HOME) and the home of a user the system knows are expanded at load. A user it does not
know yet (a package or LDAP adds it after confsync starts) was a configuration error at load
(exit 2, which the shipped units never restart); now the path is kept as written and treated
as the TLS and password files are: `once` exits 3 (transient), `watch` waits for the user.
Real etcd, real processes, a real user added with useradd (root only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

TEMPLATE = "v={{ getv('/k/v') }}\n"


def test_once_with_a_confdir_under_home(etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    home, dest = tmp_path / "home", tmp_path / "app.conf"
    write_resource(home / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    (tmp_path / "confsync.toml").write_text(
        f'confdir = "~/cd"\nprefix = "{prefix}"\n[etcd]\nendpoints = ["{etcd.endpoint}"]\n')
    done = confsync("once", "--config", str(tmp_path / "confsync.toml"),
                    env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert read(dest) == "v=1\n"


def test_once_with_paths_under_a_user_not_known_yet_exits_3(tmp_path: Path) -> None:
    """Was exit 2 (a configuration error, never restarted by the units)."""
    user = f"cst{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data.json"
    data.write_text('{"k": {"v": "1"}}')
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{tmp_path}/app.conf"\nkeys = ["/k"]\n')
    confdir = confsync("once", "--confdir", f"~{user}/cd", "--backend", "file", "--file",
                       str(data))
    assert confdir.returncode == 3, confdir.stderr
    assert (f"confdir ~{user}/cd: cannot expand '~{user}': no such user on this system "
            "(yet?)") in confdir.stderr
    file = confsync("once", "--confdir", str(tmp_path / "cd"), "--backend", "file", "--file",
                    f"~{user}/data.json")
    assert file.returncode == 3, file.stderr
    assert f"cannot read ~{user}/data.json: cannot expand '~{user}'" in file.stderr
    assert not (tmp_path / "app.conf").exists()


def test_watch_with_a_confdir_under_a_user_not_known_yet_starts_once_it_is(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    client(etcd.endpoint).put(prefix + "/k/v", "2")
    user = f"cst{uuid.uuid4().hex[:8]}"
    home, dest = tmp_path / "home", tmp_path / "app.conf"
    write_resource(home / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    watch = WatchProcess("--confdir", f"~{user}/cd", "--endpoints", etcd.endpoint, "--prefix",
                         prefix, log=tmp_path / "w.log")
    watchers.append(watch)
    try:
        watch.wait_log(f"confdir ~{user}/cd: cannot expand '~{user}': no such user on this "
                       "system (yet?): waiting", timeout=30)
        assert watch.proc.poll() is None and not dest.exists(), watch.output()[-2000:]
        subprocess.run(["useradd", "-M", "-N", "-d", str(home), "-s", "/usr/sbin/nologin",
                        user], check=True)
        wait_for(lambda: read(dest) == "v=2\n", 45,
                 what=f"rendered; log:\n{watch.output()[-2000:]}")
        # It locked the confdir the user's home holds: a second `watch` there is refused.
        second = confsync("watch", "--confdir", str(home / "cd"), "--endpoints", etcd.endpoint,
                          timeout=20)
        assert second.returncode == 2 and "already kept by another" in second.stderr, \
            second.stderr
        assert watch.stop() == 0, watch.output()[-2000:]
    finally:
        subprocess.run(["userdel", user], capture_output=True)


def test_a_sighup_to_a_confdir_of_a_user_not_known_keeps_the_running_set(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reload whose confdir names a user not known (any more) is refused before anything
    uses the path as written (a relative `~user/...` under the working directory)."""
    from confsync.daemon import Daemon
    from confsync.settings import Settings

    data = tmp_path / "data.yaml"
    data.write_text("k:\n  v: '1'\n")
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", TEMPLATE, f'dest = "{tmp_path}/app.conf"\nkeys = ["/k"]\n')
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)]})
    user = f"cst{uuid.uuid4().hex[:8]}"
    daemon.cli_values["confdir"] = f"~{user}/cd"
    assert daemon.reload_config() is False
    assert daemon.state.settings.confdir == confdir
    assert (f"configuration reload refused, the running set stays: settings: confdir "
            f"~{user}/cd: cannot expand '~{user}': no such user") in caplog.text
