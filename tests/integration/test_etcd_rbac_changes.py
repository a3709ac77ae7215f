"""etcd RBAC changed under a running confsync: permissions revoked and granted again, auth
disabled and enabled. The daemon must stay up, keep its files, say why in /ready, and converge
by itself once the fault is gone.

Reuses the TLS + auth etcd of test_etcd_tls_auth (`reader` may read /tls/). Every test puts the
roles back as it found them, so the module's etcd can be shared.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
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
from tests.support.register import RegisterProcess, write_registration

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
        self.password_file = tmp_path / "password"  # its own: a test may change it
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        config = tmp_path / "confsync.toml"
        config.write_text(
            f'confdir = "{confdir}"\nbackend = "etcd"\nlog_level = "debug"\n'
            f'[etcd]\nendpoints = ["{etcd.member.endpoint}"]\nca_cert = "{etcd.pki.ca_cert}"\n'
            f'cert = "{etcd.pki.client_cert}"\nkey = "{etcd.pki.client_key}"\n'
            f'user = "reader"\npassword_file = "{self.password_file}"\ntimeout = "3s"\n'
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


def test_watch_across_a_password_change_and_a_recreated_user(
        daemon: Daemon, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """The password changed in etcd before the file, then the user deleted and re-created:
    each time /ready names the refused login, the process stays up and keeps the file, and it
    logs in again by itself (the file is read at every reconnect), then catches up."""
    etcd = secure_etcd
    before = daemon.dest.read_bytes()
    try:
        etcd.ctl("user", "passwd", "reader", "--interactive=false", stdin="N3w-pa55\n")
        wait_for(lambda: "authentication failed" in daemon.lost(), 10,
                 what="/ready naming the refused password")
        etcd.ctl("put", "/tls/backend/c", "10.0.0.3:80")
        time.sleep(1.5)  # a few refused logins
        assert daemon.ready()[0] == 503 and daemon.alive()
        assert daemon.dest.read_bytes() == before
        daemon.password_file.write_text("N3w-pa55\n")
        wait_for(lambda: b"/tls/backend/c=10.0.0.3:80" in daemon.dest.read_bytes(), 15,
                 what="caught up with the new password")
        wait_for(lambda: daemon.ready()[0] == 200, 5, what="ready with the new password")

        with_c = daemon.dest.read_bytes()
        etcd.ctl("user", "delete", "reader")
        wait_for(lambda: "authentication failed" in daemon.lost(), 10,
                 what="/ready naming the deleted user")
        etcd.ctl("put", "/tls/backend/d", "10.0.0.4:80")
        time.sleep(1.5)
        assert daemon.ready()[0] == 503 and daemon.alive()
        assert daemon.dest.read_bytes() == with_c
        etcd.ctl("user", "add", "reader", "--new-user-password=N3w-pa55")
        etcd.ctl("user", "grant-role", "reader", "reader")
        wait_for(lambda: b"/tls/backend/d=10.0.0.4:80" in daemon.dest.read_bytes(), 15,
                 what="caught up with the re-created user")
        wait_for(lambda: daemon.ready()[0] == 200, 5, what="ready with the re-created user")
    finally:
        etcd.ctl("user", "add", "reader", "--new-user-password=" + PASSWORD, check=False)
        etcd.ctl("user", "grant-role", "reader", "reader")
        etcd.ctl("user", "passwd", "reader", "--interactive=false", stdin=PASSWORD + "\n")
        etcd.ctl("del", "/tls/backend/c")
        etcd.ctl("del", "/tls/backend/d")


# ---- confsync register

REG_PASSWORD = "Reg-pa55-do-not-log"
REG_KEY = "/reg/services/web/instances/web-1"
REG_TTL = 3  # keepalives every second


class Registered:
    """`confsync register` as user `registrar` (readwrite on /reg/ only), one instance whose
    TCP check passes while `listener` is open."""

    def __init__(self, etcd: SecureEtcd, tmp_path: Path) -> None:
        self.etcd = etcd
        self.listener: socket.socket | None = _accepting(socket.create_server(("127.0.0.1", 0)))
        self.port = self.listener.getsockname()[1]
        self.password_file = tmp_path / "registrar-password"
        self.password_file.write_text(REG_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        config = tmp_path / "register.toml"
        config.write_text(
            f'[etcd]\nca_cert = "{etcd.pki.ca_cert}"\ncert = "{etcd.pki.client_cert}"\n'
            f'key = "{etcd.pki.client_key}"\nuser = "registrar"\n'
            f'password_file = "{self.password_file}"\ntimeout = "2s"\n')
        write_registration(tmp_path / "conf", "web", (
            f'service = "web"\nid = "web-1"\nport = {self.port}\n'
            f'ttl = "{REG_TTL}s"\ndrain = "0s"\n[[check]]\ntype = "tcp"\ninterval = "100ms"\nrise = 1\n'
            'fall = 1\n'))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = RegisterProcess(
            tmp_path / "conf", etcd.member.endpoint, "--config", str(config), "--prefix",
            "/reg", "--hostname", "node-a", "--metrics-address",
            self.url.removeprefix("http://"), log=tmp_path / "register.log")

    def key(self) -> tuple[str, int] | None:
        """(published state, lease id) of the instance's key, read as root."""
        for kv in json.loads(self.etcd.ctl("get", REG_KEY, "-w", "json")).get("kvs") or []:
            value = json.loads(base64.b64decode(kv["value"]))
            return str(value["state"]), int(kv.get("lease", 0))
        return None

    def ready(self) -> tuple[int, dict[str, object]]:
        return probe(self.url, "/ready", timeout=2)

    def reasons(self) -> str:
        return " ".join(str(r) for r in self.ready()[1].get("reasons", []) or [])

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def check_down(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread)
        self.listener.close()
        self.listener = None

    def check_up(self) -> None:
        self.listener = _accepting(socket.create_server(("127.0.0.1", self.port)))


def _accepting(listener: socket.socket) -> socket.socket:
    """Accept (and close) the check's connections: never accepted, they filled the listen
    backlog (128) in 12.8 s at interval 100ms, and the check then timed out, so a test that
    ran longer saw the instance go down."""
    def serve() -> None:
        with contextlib.suppress(OSError):  # (closed: check_down)
            while True:
                listener.accept()[0].close()

    threading.Thread(target=serve, daemon=True).start()
    return listener


@pytest.fixture
def registered(secure_etcd: SecureEtcd, tmp_path: Path) -> Iterator[Registered]:  # noqa: F811
    etcd = secure_etcd
    etcd.ctl("role", "add", "registrar")
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "readwrite", "/reg/")
    etcd.ctl("user", "add", "registrar", "--new-user-password=" + REG_PASSWORD)
    etcd.ctl("user", "grant-role", "registrar", "registrar")
    running = Registered(etcd, tmp_path)
    try:
        wait_for(lambda: running.key() is not None and running.ready()[0] == 200, 15,
                 what="registered")
        yield running
    finally:
        running.proc.stop()
        if running.listener is not None:
            running.listener.close()
        etcd.ctl("auth", "enable", user=None, check=False)
        etcd.ctl("user", "delete", "registrar", check=False)
        etcd.ctl("role", "delete", "registrar")
        etcd.ctl("del", "--prefix", "/reg/")
        output = running.proc.output()
        assert "Traceback" not in output, output[-3000:]
        assert REG_PASSWORD not in output and "N3w-pa55" not in output


def test_register_keeps_a_healthy_instance_while_its_password_is_refused(
        registered: Registered, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """The password is changed in etcd before the file: confsync cannot authenticate, says so
    in /ready, and keeps renewing the lease (etcd serves keepalives without a token), so the
    healthy instance stays in the pool; once the file holds the new password it is ready."""
    state, lease = registered.key() or ("", 0)
    secure_etcd.ctl("user", "passwd", "registrar", "--interactive=false",
                    stdin="N3w-pa55\n")
    time.sleep(2 * REG_TTL)  # twice the lease's TTL without an authenticated call
    assert registered.key() == (state, lease), "still registered, on the same lease"
    assert registered.proc.proc.poll() is None
    assert registered.ready()[0] == 503
    assert "authentication failed" in registered.reasons()
    registered.password_file.write_text("N3w-pa55\n")
    wait_for(lambda: registered.ready()[0] == 200, 10, what="ready with the new password")
    assert registered.key() == (state, lease)


def test_register_lets_a_stale_key_lapse_when_etcd_refuses_the_change(
        registered: Registered, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """Write permission revoked, then the instance's check goes down: confsync cannot delete
    its key, and must not keep it alive by renewing the lease (a dead instance in the pool).
    It says why in /ready meanwhile; with the permission back, it registers again by itself."""
    etcd = secure_etcd
    etcd.ctl("role", "revoke-permission", "registrar", "/reg/", "--prefix=true")
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "read", "/reg/")
    registered.check_down()
    seen: list[tuple[int, str]] = []  # /ready while the stale key is there

    def lapsed() -> bool:
        seen.append((registered.ready()[0], registered.reasons()))
        return registered.key() is None

    wait_for(lapsed, REG_TTL + 2, what="the stale key lapsing")
    assert registered.proc.proc.poll() is None
    # Said as a refusal naming the key, not as an outage: etcd answers (it said "etcd not
    # connected" and logged "etcd unreachable").
    assert (503, f"etcd refuses writing {REG_KEY} (permission denied): PERMISSION_DENIED: "
            "etcdserver: permission denied") in seen, seen
    assert registered.metric("confsync_register_etcd_connected") == 1
    assert "etcd unreachable" not in registered.proc.output()
    assert f"etcd refuses writing {REG_KEY} for lack of permission" in registered.proc.output()
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "readwrite", "/reg/")
    wait_for(lambda: registered.ready()[0] == 200, 10, what="ready with the permission back")
    assert registered.key() is None  # (the check is still down)
    registered.check_up()
    wait_for(lambda: registered.key() is not None, 5, what="registered again")
    assert registered.key() == ("ready", registered.key()[1])  # type: ignore[index]


def test_register_says_steadily_that_etcd_refuses_its_read_back(
        registered: Registered, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """The role may write its keys but no longer read them (a "least privilege" change): the
    read-back after each keepalive is refused. That was said as "etcd unreachable" and then
    "etcd connected" at the next call: /ready and etcd_connected flapped every ttl/3, two log
    lines each time, for as long as the role stayed so. Now one ERROR naming the key, /ready
    503 with the reason throughout, etcd_connected 1, and the healthy key kept on its lease."""
    etcd = secure_etcd
    _, lease = registered.key() or ("", 0)
    etcd.ctl("role", "revoke-permission", "registrar", "/reg/", "--prefix=true")
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "write", "/reg/")
    refusal = f"etcd refuses reading {REG_KEY} (permission denied)"
    try:
        wait_for(lambda: refusal in registered.reasons(), REG_TTL + 2, what="/ready says why")
        seen = []
        until = time.monotonic() + 2 * REG_TTL  # six keepalives
        while time.monotonic() < until:
            seen.append((registered.ready()[0], registered.metric(
                "confsync_register_etcd_connected")))
            time.sleep(0.1)
        assert set(seen) == {(503, 1.0)}, seen
        assert refusal in registered.reasons()
        assert registered.metric("confsync_register_etcd_reads_refused") == 1
        out = registered.proc.output()
        assert "etcd unreachable" not in out, out[-3000:]
        assert out.count(f"ERROR register: etcd refuses reading {REG_KEY}") == 1, out[-3000:]
        assert registered.key() == ("ready", lease)
    finally:
        etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "readwrite", "/reg/")
    wait_for(lambda: registered.ready()[0] == 200, 10, what="ready with the permission back")
    assert registered.metric("confsync_register_etcd_reads_refused") == 0
    assert "etcd accepts our reads again" in registered.proc.output()
    assert registered.key() == ("ready", lease)


def test_register_registers_again_at_once_after_an_admin_revokes_its_lease(
        registered: Registered, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """`etcdctl lease revoke` deletes the key at once: the next keepalive (within ttl/3)
    finds the lease gone, and the key is back under a new lease; the metrics count both."""
    _, lease = registered.key() or ("", 0)
    secure_etcd.ctl("lease", "revoke", f"{lease:x}")
    # Gone with its lease (or already back on a new one: a keepalive can come between the
    # revoke and the read, each an etcdctl run of 0.1-0.3 s on a loaded host).
    assert (registered.key() or ("", 0))[1] != lease
    wait_for(lambda: registered.key() is not None, REG_TTL / 3 + 1.5,
             what="registered again under a new lease")
    state, new_lease = registered.key() or ("", 0)
    assert state == "ready" and new_lease != lease
    assert registered.metric("confsync_register_leases_granted_total") == 2
    assert registered.metric("confsync_register_lease_keepalive_failures_total") >= 1
    assert registered.ready()[0] == 200
    assert probe(registered.url, "/health")[0] == 200


def test_register_keeps_its_lease_while_auth_is_disabled_and_enabled_again(
        registered: Registered, secure_etcd: SecureEtcd) -> None:  # noqa: F811
    """With auth off, etcd refuses to authenticate anyone: the registrar connects without a
    token instead of losing its lease; with auth on again it authenticates by itself."""
    _, lease = registered.key() or ("", 0)
    secure_etcd.ctl("auth", "disable")
    time.sleep(2 * REG_TTL)
    assert registered.key() == ("ready", lease)
    assert registered.ready()[0] == 200
    secure_etcd.ctl("auth", "enable", user=None)
    time.sleep(2 * REG_TTL)
    assert registered.key() == ("ready", lease)
    wait_for(lambda: registered.ready()[0] == 200, 5, what="ready with auth on")


def test_a_registration_etcd_refuses_does_not_hold_back_the_others(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:  # noqa: F811
    """The role may write web's key and not api's (a file added before its permission, a
    permission revoked): api is refused, and /ready and the log say so, while web is
    registered and follows its checks. The refused write ended the whole step, before web's
    write, at every try: web was never registered. And a registrar refused from its first
    write on never said why: "lost" was only reported after a "connected"."""
    etcd = secure_etcd
    etcd.ctl("role", "add", "registrar")
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "readwrite",
             "/reg/services/web/")
    etcd.ctl("role", "grant-permission", "registrar", "--prefix=true", "read", "/reg/")
    etcd.ctl("user", "add", "registrar", "--new-user-password=" + REG_PASSWORD)
    etcd.ctl("user", "grant-role", "registrar", "registrar")
    write_registration(tmp_path / "conf", "api", (  # sorted before web: written first
        'service = "api"\nid = "api-1"\nport = 9\nttl = "3s"\ndrain = "0s"\n'
        '[[check]]\ntype = "exec"\ncommand = ["true"]\ninterval = "100ms"\nrise = 1\n'))
    running = Registered(etcd, tmp_path)
    try:
        wait_for(lambda: running.key() is not None, 15, what="web registered")
        assert running.key() == ("ready", running.key()[1])  # type: ignore[index]
        wait_for(lambda: "permission denied" in running.reasons(), 10, what="/ready says why")
        wait_for(lambda: "ERROR register: etcd refuses writing /reg/services/api/instances/"
                 "api-1 for lack of permission" in running.proc.output(), 10, what="the log")
        assert "etcd unreachable" not in running.proc.output()
        assert not etcd.ctl("get", "/reg/services/api/instances/api-1")
        running.check_down()
        wait_for(lambda: running.key() is None, 10, what="web deleted with its check down")
        assert running.proc.proc.poll() is None
    finally:
        running.proc.stop()
        if running.listener is not None:
            running.listener.close()
        etcd.ctl("user", "delete", "registrar", check=False)
        etcd.ctl("role", "delete", "registrar")
        etcd.ctl("del", "--prefix", "/reg/")
        output = running.proc.output()
        assert "Traceback" not in output, output[-3000:]
        assert REG_PASSWORD not in output
