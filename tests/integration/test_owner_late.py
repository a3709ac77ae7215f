"""A resource's `owner`/`group` name the system does not know yet (users served by LDAP or
sssd before that service is up at boot, a user a package creates after confsync started).

It used to be refused when conf.d loaded: `once` exited 2 as for a typo, and `watch` left the
resource out until the next SIGHUP (its file never written, /ready green without it). Now the
name is looked up at each write: that resource fails at step "owner" (the others are written),
/ready names it, and the retry writes it once the name resolves. Real etcd, real users (root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

TEMPLATE = "value={{ getv('/k/v') }}\n"


def _resources(confdir: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    app, other = tmp_path / "app.conf", tmp_path / "other.conf"
    write_resource(confdir, "app", TEMPLATE,
                   f'dest = "{app}"\nkeys = ["/k"]\nowner = "{name}"\ngroup = "{name}"\n')
    write_resource(confdir, "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
    return app, other


def test_once_fails_only_that_resource_and_says_which_name(
        etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    name = f"cs-none-{uuid.uuid4().hex[:8]}"
    app, other = _resources(tmp_path / "cd", tmp_path, name)
    done = confsync("once", "--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                    "--prefix", prefix)
    assert done.returncode == 1, done.stderr  # a resource failed; not 2, a bad configuration
    assert f"resource app: owner failed: no such user '{name}' on this system" in done.stderr
    assert read(other) == "value=1\n"
    assert not app.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.fixture
def late_user() -> Iterator[str]:
    """A user and group name no one has yet; both removed after the test."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    name = f"csl{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


def _watch(etcd: EtcdMember, tmp_path: Path, prefix: str,
           watchers: list[WatchProcess]) -> tuple[WatchProcess, str]:
    """`watch` of tmp_path/cd, and the base URL of its /ready."""
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    watchers.append(w)
    return w, f"http://127.0.0.1:{port}"


def test_watch_writes_the_file_once_the_user_exists(
        etcd: EtcdMember, tmp_path: Path, prefix: str, late_user: str,
        watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    app, other = _resources(tmp_path / "cd", tmp_path, late_user)
    w, base = _watch(etcd, tmp_path, prefix, watchers)
    wait_for(lambda: read(other) == "value=1\n", 20, what="the other resource")
    w.wait_log(f"resource app: owner failed: no such user '{late_user}'", timeout=10)

    def failing_honestly() -> bool:
        status, body = probe(base, "/ready")
        return (status == 503 and "failing: app" in body.get("reasons", [])
                and probe(base, "/health")[0] == 200)

    wait_for(failing_honestly, 10, what="/ready 503 naming app, /health 200")
    assert not app.exists()
    subprocess.run(["groupadd", late_user], check=True)
    subprocess.run(["useradd", "-M", "-N", "-g", late_user, "-s", "/usr/sbin/nologin",
                    late_user], check=True)
    user = pwd.getpwnam(late_user)
    wait_for(lambda: read(app) == "value=1\n", 30,
             what=f"the retry once the user exists\n{w.output()[-2000:]}")
    st = app.stat()
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    wait_for(lambda: probe(base, "/ready")[0] == 200, 10, what="ready")
    assert w.proc.poll() is None


def _free_uids(count: int) -> list[int]:
    """Ids no user or group has (useradd would give a user made again its old one)."""
    free: list[int] = []
    for uid in range(47000 + os.getpid() % 1000 * 50, 2**31):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        free.append(uid)
        if len(free) == count:
            return free
    raise AssertionError("no free uid")


def test_a_user_made_again_with_another_id_gets_its_file_at_a_sighup(
        etcd: EtcdMember, tmp_path: Path, prefix: str, late_user: str,
        watchers: list[WatchProcess]) -> None:
    """A user deleted and made again (a package purged and installed again, a move to LDAP)
    has another id. The id found first was kept for the process's life: the file stayed the
    old id's through SIGHUPs and data changes, and after the user was gone, /ready 200."""
    first, second = _free_uids(2)
    subprocess.run(["useradd", "-M", "-N", "-u", str(first), "-s", "/usr/sbin/nologin",
                    late_user], check=True)
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    app = tmp_path / "app.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{app}"\nkeys = ["/k"]\nowner = "{late_user}"\n')
    w, base = _watch(etcd, tmp_path, prefix, watchers)
    wait_for(lambda: read(app) == "value=1\n" and probe(base, "/ready")[0] == 200, 20,
             what="the file written, ready")
    assert app.stat().st_uid == first

    subprocess.run(["userdel", late_user], check=True)
    subprocess.run(["useradd", "-M", "-N", "-u", str(second), "-s", "/usr/sbin/nologin",
                    late_user], check=True)
    w.signal(signal.SIGHUP)
    wait_for(lambda: app.stat().st_uid == second, 20,
             what=f"the file given the new id\n{w.output()[-2000:]}")
    assert read(app) == "value=1\n"
    wait_for(lambda: probe(base, "/ready")[0] == 200, 10, what="ready")

    subprocess.run(["userdel", late_user], check=True)
    w.signal(signal.SIGHUP)
    w.wait_log(f"resource app: owner failed: no such user '{late_user}'", timeout=20)
    status, body = probe(base, "/ready")
    assert status == 503 and "failing: app" in body["reasons"], body
    assert probe(base, "/health")[0] == 200
    assert app.stat().st_uid == second  # (left as it was: nothing chowned to a gone id)
