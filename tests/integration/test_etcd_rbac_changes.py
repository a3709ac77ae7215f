"""etcd RBAC changed under a running confsync: permissions revoked and granted again, auth
disabled and enabled. The daemon must stay up, keep its files, say why in /ready, and converge
by itself once the fault is gone.

Reuses the TLS + auth etcd of test_etcd_tls_auth (`reader` may read /tls/). Every test puts the
roles back as it found them, so the module's etcd can be shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_etcd_tls_auth import (
    PASSWORD,
    REPO,
    SecureEtcd,
    secure_etcd,  # noqa: F401 (the fixture)
    text,
)
from tests.support.daemon import wait_for as _wait_for
from tests.support.etcd_server import free_port
from tests.support.http_probe import probe

pytestmark = pytest.mark.etcd


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    _wait_for(predicate, timeout, interval=0.1, what=what)

# `confsync watch` with position checks every second instead of 10 s, so a lost permission is
# seen quickly (the same code path, only the period differs).
WATCH_DRIVER = """
import sys
from confsync.daemon import run_daemon
from confsync.logs import setup_logging
from confsync.ops.wiring import Ops
from confsync.settings import load_settings
from confsync.stores import etcd
etcd.POSITION_CHECK_SECONDS = 1.0
settings = load_settings({})
setup_logging(settings.log_level, settings.log_format)
with Ops.from_settings(settings) as ops:
    sys.exit(ops.exit_code(run_daemon(settings, {}, ops.observers)))
"""

TEMPLATE = ("{% for kv in gets('/tls/backend/*') + gets('/tlz/*') %}"
            "{{ kv.key }}={{ kv.value }}\n{% endfor %}")


class Daemon:
    """`confsync watch` (through WATCH_DRIVER) as `reader`, rendering /tls/backend/ and /tlz/."""

    def __init__(self, etcd: SecureEtcd, tmp_path: Path) -> None:
        confdir = tmp_path / "conf"
        (confdir / "conf.d").mkdir(parents=True)
        (confdir / "templates").mkdir()
        (confdir / "templates" / "pool.tmpl").write_text(TEMPLATE)
        self.dest = tmp_path / "pool.txt"
        (confdir / "conf.d" / "pool.toml").write_text(
            f'[template]\nsrc = "pool.tmpl"\ndest = "{self.dest}"\n'
            'keys = ["/tls/backend/", "/tlz/"]\n')
        config = tmp_path / "confsync.toml"
        config.write_text(
            f'confdir = "{confdir}"\nbackend = "etcd"\nlog_level = "debug"\n'
            f'[etcd]\nendpoints = ["{etcd.member.endpoint}"]\nca_cert = "{etcd.pki.ca_cert}"\n'
            f'cert = "{etcd.pki.client_cert}"\nkey = "{etcd.pki.client_key}"\n'
            f'user = "reader"\npassword_file = "{etcd.password_file}"\ntimeout = "3s"\n'
            '[watch]\nwait_min = "20ms"\n')
        driver = tmp_path / "driver.py"
        driver.write_text(WATCH_DRIVER)
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFSYNC_", "NOTIFY_"))}
        env.update({"PYTHONPATH": str(REPO), "CONFSYNC_CONFIG": str(config),
                    "CONFSYNC_METRICS_ADDRESS": self.url.removeprefix("http://")})
        self.log = tmp_path / "confsync.log"
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, str(driver)], env=env, cwd=REPO,
                                         stdout=fh, stderr=subprocess.STDOUT)

    def ready(self) -> tuple[int, dict[str, object]]:
        return probe(self.url, "/ready", timeout=2)

    def lost(self) -> str:
        return str(self.ready()[1].get("watch_lost", ""))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def daemon(secure_etcd: SecureEtcd, tmp_path: Path) -> Iterator[Daemon]:  # noqa: F811
    etcd = secure_etcd
    etcd.ctl("role", "grant-permission", "reader", "--prefix=true", "read", "/tlz/")
    etcd.ctl("put", "/tlz/x", "10.0.1.1:80")
    running = Daemon(etcd, tmp_path)
    try:
        wait_for(lambda: running.ready()[0] == 200, 15, what="ready")
        yield running
    finally:
        code = running.stop()
        for prefix in ("/tls/", "/tlz/"):  # whatever the test left, as the fixture made it
            etcd.ctl("role", "revoke-permission", "reader", prefix, "--prefix=true",
                     check=False)
        etcd.ctl("role", "grant-permission", "reader", "--prefix=true", "read", "/tls/")
        etcd.ctl("del", "--prefix", "/tlz/")
        output = text(running.log)
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert PASSWORD not in output


def test_watch_refused_for_one_prefix_is_reported_not_silent(
        daemon: Daemon, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """Read permission revoked on every watched prefix, then granted back one prefix at a time.

    While a prefix is unreadable, /ready says so (permission denied), the process stays up and
    the file stays as it was (a refused read is never "no keys"). etcd refuses a watch it may
    not serve with a cancel *inside* an open stream, which the client library drops: the watch
    of the one still-refused prefix must fail, not stay silently dead under a green /ready.
    """
    etcd = secure_etcd
    before = daemon.dest.read_bytes()
    assert before == b"/tls/backend/a=10.0.0.1:80\n/tls/backend/b=10.0.0.2:80\n" \
                     b"/tlz/x=10.0.1.1:80\n"
    etcd.ctl("role", "revoke-permission", "reader", "/tls/", "--prefix=true")
    etcd.ctl("role", "revoke-permission", "reader", "/tlz/", "--prefix=true")
    wait_for(lambda: "permission denied" in daemon.lost(), 10, what="/ready naming the denial")
    assert daemon.ready()[0] == 503

    # /tls/ readable again (the position check reads there), /tlz/ still refused.
    etcd.ctl("role", "grant-permission", "reader", "--prefix=true", "read", "/tls/")
    wait_for(lambda: "watch of /tlz/ refused" in daemon.lost(), 15,
             what="the refused watch of /tlz/ reported")
    assert "permission denied" in daemon.lost()
    assert daemon.ready()[0] == 503 and daemon.alive()
    assert daemon.dest.read_bytes() == before

    etcd.ctl("put", "/tlz/y", "10.0.1.2:80")  # written while confsync could not see it
    etcd.ctl("role", "grant-permission", "reader", "--prefix=true", "read", "/tlz/")
    wait_for(lambda: b"/tlz/y=10.0.1.2:80" in daemon.dest.read_bytes(), 20,
             what="convergence after the grant")
    wait_for(lambda: daemon.ready()[0] == 200, 5, what="ready again")
    assert daemon.dest.read_bytes() == before + b"/tlz/y=10.0.1.2:80\n"


def test_auth_disabled_then_enabled_keeps_following(
        daemon: Daemon, secure_etcd: SecureEtcd, tmp_path: Path) -> None:  # noqa: F811
    """`etcdctl auth disable` makes etcd drop every token and refuse to authenticate anyone
    ("authentication is not enabled") while it serves everyone: confsync reconnects without a
    token instead of staying degraded until auth is back; `once` reads too. After `auth
    enable` it authenticates again by itself."""
    etcd = secure_etcd
    etcd.ctl("auth", "disable")
    try:
        time.sleep(2.5)  # position checks (every 1 s) meet the dropped token and reconnect
        etcd.ctl("put", "/tls/backend/c", "10.0.0.3:80", user=None)
        wait_for(lambda: b"/tls/backend/c=10.0.0.3:80" in daemon.dest.read_bytes(), 10,
                 what="a change while auth is off")
        assert daemon.ready()[0] == 200, daemon.ready()
        once = subprocess.run(
            [sys.executable, "-m", "confsync", "once", "--config",
             str(tmp_path / "confsync.toml")], cwd=REPO, capture_output=True, text=True,
            timeout=60, env={**{k: v for k, v in os.environ.items()
                                if not k.startswith("CONFSYNC_")}, "PYTHONPATH": str(REPO)})
        assert once.returncode == 0, once.stderr
    finally:
        etcd.ctl("auth", "enable", user=None, check=False)
    try:
        time.sleep(2.5)  # the token-less position check is refused: authenticate again
        etcd.ctl("put", "/tls/backend/d", "10.0.0.4:80")
        wait_for(lambda: b"/tls/backend/d=10.0.0.4:80" in daemon.dest.read_bytes(), 15,
                 what="a change after auth is on again")
        wait_for(lambda: daemon.ready()[0] == 200, 10, what="ready with auth on")
    finally:
        etcd.ctl("del", "/tls/backend/c")
        etcd.ctl("del", "/tls/backend/d")
