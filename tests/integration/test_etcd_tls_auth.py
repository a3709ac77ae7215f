"""etcd with TLS (client certificates required) and auth on: confsync reads through both.

Certificates are made at test time (tests/support/certs.py); users and roles are created with the
etcdctl shipped next to the etcd binary. Simple tokens with a 2 s TTL make expiry testable.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from confsync.errors import StoreUnavailable
from confsync.settings import EtcdSettings
from confsync.stores import ChangeBatch
from confsync.stores.etcd import EtcdStore
from tests.support.certs import Pki, make_pki
from tests.support.etcd_server import EtcdMember, free_port, start_single

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.etcd


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")

PASSWORD = "s3cret-Pa55-do-not-log"
ROOT = "root:r00t-pw"
TOKEN_TTL = 2


@dataclass
class SecureEtcd:
    member: EtcdMember
    pki: Pki
    etcdctl: str
    password_file: Path

    def ctl(self, *args: str, user: str | None = ROOT, check: bool = True,
            stdin: str | None = None) -> str:
        argv = [self.etcdctl, "--command-timeout=15s", "--endpoints", self.member.endpoint,
                "--cacert",
                str(self.pki.ca_cert), "--cert", str(self.pki.client_cert), "--key",
                str(self.pki.client_key), *(["--user", user] if user else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, input=stdin)
        assert done.returncode == 0 or not check, done.stderr
        return done.stdout

    def wait_serving(self, timeout: float = 20.0) -> None:
        """An open port is not a leader: wait until etcd answers (after a start or restart)."""
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [self.etcdctl, "--command-timeout=2s", "--endpoints", self.member.endpoint,
                 "--cacert", str(self.pki.ca_cert), "--cert", str(self.pki.client_cert),
                 "--key", str(self.pki.client_key), "endpoint", "health"],
                capture_output=True, text=True, timeout=10)
            if done.returncode == 0 or time.monotonic() > deadline:
                assert done.returncode == 0, done.stderr
                return
            time.sleep(0.1)

    def settings(self, **kw: object) -> EtcdSettings:
        values: dict[str, object] = dict(
            endpoints=(self.member.endpoint,), ca_cert=self.pki.ca_cert,
            cert=self.pki.client_cert, key=self.pki.client_key, user="reader",
            password_file=self.password_file, timeout=3.0)
        values.update(kw)
        return EtcdSettings(**values)  # type: ignore[arg-type]


def start_secure(etcd_binary: str, base: Path, server_client_auth: bool = True) -> SecureEtcd:
    """A TLS etcd with auth on: root, and `reader` with read access to /tls/ only."""
    pki = make_pki(base / "pki", server_client_auth=server_client_auth)
    member = start_single(etcd_binary, base / "etcd", scheme="https", extra_args=[
        "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca_cert), "--client-cert-auth",
        "--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)])
    password_file = base / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    etcd = SecureEtcd(member, pki, str(Path(etcd_binary).with_name("etcdctl")), password_file)
    try:
        etcd.wait_serving()
        ctl = etcd.ctl
        ctl("user", "add", "root", "--new-user-password=" + ROOT.split(":", 1)[1], user=None)
        ctl("user", "grant-role", "root", "root", user=None)
        ctl("role", "add", "reader", user=None)
        ctl("role", "grant-permission", "reader", "--prefix=true", "read", "/tls/", user=None)
        ctl("user", "add", "reader", "--new-user-password=" + PASSWORD, user=None)
        ctl("user", "grant-role", "reader", "reader", user=None)
        ctl("auth", "enable", user=None)
        ctl("put", "/tls/backend/a", "10.0.0.1:80")
        ctl("put", "/tls/backend/b", "10.0.0.2:80")
        ctl("put", "/secret/x", "not for readers")
    except BaseException:
        member.stop()
        raise
    return etcd


@pytest.fixture(scope="module")
def secure_etcd(etcd_binary: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    etcd = start_secure(etcd_binary, tmp_path_factory.mktemp("etcd-tls"))
    yield etcd
    etcd.member.stop()


def _confdir(tmp_path: Path, keys: str = "/tls/backend") -> Path:
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "b.tmpl").write_text(
        "{% for kv in gets('/*') %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}")
    (confdir / "conf.d" / "b.toml").write_text(
        f'[template]\nsrc = "b.tmpl"\ndest = "{tmp_path / "out.txt"}"\nkeys = ["/"]\n'
        f'prefix = "{keys}"\n')
    return confdir


def _config(tmp_path: Path, etcd: SecureEtcd, password_file: Path) -> Path:
    config = tmp_path / "confsync.toml"
    config.write_text(
        f'confdir = "{_confdir(tmp_path)}"\nbackend = "etcd"\nlog_level = "debug"\n'
        f'log_format = "json"\n[etcd]\nendpoints = ["{etcd.member.endpoint}"]\n'
        f'ca_cert = "{etcd.pki.ca_cert}"\ncert = "{etcd.pki.client_cert}"\n'
        f'key = "{etcd.pki.client_key}"\nuser = "reader"\npassword_file = "{password_file}"\n'
        f'timeout = "3s"\n')
    return config


def _once(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "confsync", "once", "--config", str(config),
                           *extra], capture_output=True, text=True, timeout=60)


def _config_naming(tmp_path: Path, etcd: SecureEtcd, files: dict[Path, str]) -> Path:
    """`_config` with each file of `files` named as given instead (text logs)."""
    config = _config(tmp_path, etcd, etcd.password_file)
    text_ = config.read_text().replace('log_format = "json"', 'log_format = "text"')
    for have, want in files.items():
        text_ = text_.replace(f'"{have}"', f'"{want}"')
    config.write_text(text_)
    return config


def _watch_waits_then_renders(tmp_path: Path, config: Path, why: str,
                              mend: Callable[[], object]) -> None:
    """A `watch` that cannot connect runs, /ready saying `why`, until `mend()`; then renders."""
    from tests.support.etcd_server import free_port
    from tests.support.http_probe import probe

    port = free_port()
    log = tmp_path / "watch.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "confsync", "watch", "--config",
                                 str(config), "--metrics-address", f"127.0.0.1:{port}"],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: why in text(log), "the reason logged", 20)
        wait_for(lambda: why in probe(f"http://127.0.0.1:{port}", "/ready")[1].get(
            "watch_lost", ""), "/ready says why", 20)
        assert proc.poll() is None and not (tmp_path / "out.txt").exists(), text(log)
        mend()
        wait_for(lambda: "b=10.0.0.2:80" in text(tmp_path / "out.txt"), "render once mended",
                 45)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_once_renders_through_tls_and_password_file(secure_etcd: SecureEtcd,
                                                    tmp_path: Path) -> None:
    done = _once(_config(tmp_path, secure_etcd, secure_etcd.password_file))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "a=10.0.0.1:80\nb=10.0.0.2:80\n"
    assert PASSWORD not in done.stdout + done.stderr
    # json logs: one object per line, the apply event among them
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("resource") == "b" and e.get("outcome") == "updated" for e in events)


def test_wrong_password_is_exit_3_and_never_logged(secure_etcd: SecureEtcd,
                                                   tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("Wr0ng-pa55word-also-secret\n")
    done = _once(_config(tmp_path, secure_etcd, wrong))
    assert done.returncode == 3, done.stderr
    assert "authentication failed" in done.stderr
    assert "Wr0ng-pa55word" not in done.stderr and PASSWORD not in done.stderr
    assert not (tmp_path / "out.txt").exists()


def test_client_certificate_is_required(secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    store = EtcdStore(secure_etcd.settings(cert=None, key=None))
    with pytest.raises(Exception, match="etcd"):
        store.snapshot(["/tls/"])
    store.close()


def test_client_certificate_renewed_on_disk_is_used_without_a_restart(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """Short-lived client certificates are renewed in place (cert-manager, Vault): the next
    client of a running store must read the new files, not the ones it built at start."""
    live = tmp_path / "live"
    live.mkdir()
    untrusted = make_pki(tmp_path / "other")  # a certificate the server does not accept
    cert, key = live / "client.pem", live / "client-key.pem"
    cert.write_bytes(untrusted.client_cert.read_bytes())
    key.write_bytes(untrusted.client_key.read_bytes())
    store = EtcdStore(secure_etcd.settings(cert=cert, key=key))
    try:
        with pytest.raises(StoreUnavailable):
            store.snapshot(["/tls/"])
        # The renewal: written to a temporary name and renamed over, as renewers do.
        for source, dest in ((secure_etcd.pki.client_cert, cert),
                             (secure_etcd.pki.client_key, key)):
            staged = dest.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            staged.replace(dest)
        assert set(store.snapshot(["/tls/"]).values) == {"/tls/backend/a", "/tls/backend/b"}
    finally:
        store.close()


def test_role_limits_what_is_read(secure_etcd: SecureEtcd) -> None:
    store = EtcdStore(secure_etcd.settings())
    try:
        assert set(store.snapshot(["/tls/"]).values) == {"/tls/backend/a", "/tls/backend/b"}
        with pytest.raises(Exception, match="permission denied"):
            store.snapshot(["/secret/"])
    finally:
        store.close()


def test_expired_token_is_renewed_by_reconnecting(secure_etcd: SecureEtcd) -> None:
    store = EtcdStore(secure_etcd.settings())
    stale = store.new_client()  # what the store would keep using without the fix
    events: queue.Queue[ChangeBatch | Exception] = queue.Queue()
    try:
        first = store.snapshot(["/tls/"])
        watch = store.watch(["/tls/"], first.revision + 1, events.put)
        time.sleep(TOKEN_TTL + 1.5)  # simple tokens expire after TTL seconds unused
        with pytest.raises(grpc.RpcError) as raw:
            stale.get_prefix_response(b"/tls/")
        assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the problem is real
        again = store.snapshot(["/tls/"])  # same store: re-authenticates and succeeds
        assert again.values == first.values
        # an open watch keeps its authorisation past the token's TTL
        secure_etcd.ctl("put", "/tls/backend/c", "10.0.0.3:80")
        batch = events.get(timeout=5)
        assert isinstance(batch, ChangeBatch) and batch.changes[0].key == "/tls/backend/c"
        watch.cancel()
    finally:
        secure_etcd.ctl("del", "/tls/backend/c")
        stale.close()
        store.close()


def test_position_checks_outlive_the_token_and_the_watch_stays_up(
        secure_etcd: SecureEtcd, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that runs after the token expired (a JWT's fixed lifetime, or here a simple
    token's TTL between checks) authenticates again; the watch is not reported lost."""
    from confsync.stores import etcd as etcd_store

    monkeypatch.setattr(etcd_store, "POSITION_CHECK_SECONDS", TOKEN_TTL + 1.0)
    store = EtcdStore(secure_etcd.settings())
    events: queue.Queue[ChangeBatch | Exception] = queue.Queue()
    try:
        first = store.snapshot(["/tls/"])
        watch = store.watch(["/tls/"], first.revision + 1, events.put)
        time.sleep(3 * (TOKEN_TTL + 1.0) + 0.5)  # three position checks, each after expiry
        secure_etcd.ctl("put", "/tls/backend/d", "10.0.0.4:80")
        item = events.get(timeout=5)
        assert isinstance(item, ChangeBatch), item
        assert item.changes[0].key == "/tls/backend/d"
        assert events.empty()
        watch.cancel()
    finally:
        secure_etcd.ctl("del", "/tls/backend/d")
        store.close()



def _root_registrar(etcd: SecureEtcd, tmp_path: Path, prefix: str,
                    tls: tuple[Path, ...]) -> tuple[Any, Any, Path]:
    """`confsync register` as root through TLS files `tls` (CA, certificate, key), with one
    registration whose tcp check passes: (process, the listener it checks, password file)."""
    import socket

    from tests.support.register import RegisterProcess, write_registration

    listener = socket.create_server(("127.0.0.1", 0))
    password = tmp_path / "root-password"
    password.write_text(ROOT.split(":", 1)[1] + "\n")
    password.chmod(0o600)
    ca, cert, key = tls
    config = tmp_path / "confsync.toml"
    config.write_text(f'[etcd]\nca_cert = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n'
                      f'user = "root"\npassword_file = "{password}"\n')
    write_registration(tmp_path / "conf", "web", (
        f'service = "web"\nid = "web-1"\nport = {listener.getsockname()[1]}\nttl = "9s"\n'
        'drain = "0s"\n'  # (no drain: the stop at the end deregisters at once)
        '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n'))
    proc = RegisterProcess(tmp_path / "conf", etcd.member.endpoint, "--config", str(config),
                           "--prefix", prefix, "--hostname", "node-a", log=tmp_path / "r.log")
    return proc, listener, password


def test_registrar_renews_an_expired_token_without_an_outage(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """Keepalives every 3 s, tokens that expire after 2 s unused: every keepalive meets an
    expired token. That is renewed quietly, never reported as etcd unreachable."""
    from tests.support.register import published

    pki = secure_etcd.pki
    proc, listener, password = _root_registrar(secure_etcd, tmp_path, "/tls-reg",
                                               (pki.ca_cert, pki.client_cert, pki.client_key))
    key = "/tls-reg/services/web/instances/web-1"
    try:
        store = EtcdStore(secure_etcd.settings(user="root", password_file=password))
        client = store.new_client()
        wait_for(lambda: published(client, key) is not None, what="registered", timeout=15)
        lease = client.get(key)[1].lease_id
        time.sleep(10)  # three keepalives, each after the token expired
        client = store.new_client()  # (the test's own token expired too)
        assert client.get(key)[1].lease_id == lease, "kept alive all along"
        out = proc.output()
        assert "auth token expired" in out, out[-2000:]
        assert "etcd unreachable" not in out, out[-2000:]
        client.close()
        store.close()
    finally:
        proc.stop()
        listener.close()


WATCH_DRIVER = """
import sys
from confsync.daemon import run_daemon
from confsync.logs import setup_logging
from confsync.ops.wiring import Ops
from confsync.settings import load_settings
settings = load_settings({})
setup_logging(settings.log_level, settings.log_format)
with Ops.from_settings(settings) as ops:
    sys.exit(ops.exit_code(run_daemon(settings, {}, ops.observers)))
"""


def test_watch_through_tls_auth_across_token_expiry_and_etcd_restart(
        etcd_binary: str, tmp_path: Path) -> None:
    etcd = start_secure(etcd_binary, tmp_path / "etcd")
    out = tmp_path / "out.txt"
    driver = tmp_path / "driver.py"
    driver.write_text(WATCH_DRIVER)
    log = tmp_path / "confsync.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFSYNC_", "NOTIFY_"))}
    env.update({"PYTHONPATH": str(REPO), "CONFSYNC_CONFIG": str(
        _config(tmp_path, etcd, etcd.password_file)), "CONFSYNC_LOG_FORMAT": "text",
        "CONFSYNC_WATCH_WAIT_MIN": "20ms"})
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "b=10.0.0.2:80" in text(out), "the first render")
        time.sleep(TOKEN_TTL + 1)  # every token issued so far has expired
        etcd.ctl("put", "/tls/backend/c", "10.0.0.3:80")
        wait_for(lambda: "c=10.0.0.3:80" in text(out), "a change after token expiry")
        etcd.member.kill()  # etcd forgets all simple tokens; the watch must resume anew
        etcd.member.start()
        etcd.wait_serving()
        etcd.ctl("put", "/tls/backend/d", "10.0.0.4:80")
        wait_for(lambda: "d=10.0.0.4:80" in text(out), "a change after etcd restarted", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        etcd.member.stop()
    output = text(log)
    assert "Traceback" not in output, output
    assert PASSWORD not in output


def test_watch_started_before_its_tls_files_exist_connects_once_they_do(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """At boot, vault-agent or cert-manager may write the client certificate after confsync
    starts. A missing TLS file at start was exit 2, which the shipped units never restart
    (RestartPreventExitStatus=2): the node stayed unmanaged. Now `watch` runs, says which file
    it cannot read (/ready too), and connects once the files are there."""
    import shutil

    late = tmp_path / "late"
    pki = secure_etcd.pki
    files = {pki.ca_cert: late / "ca.pem", pki.client_cert: late / "client.pem",
             pki.client_key: late / "client-key.pem"}
    config = _config_naming(tmp_path, secure_etcd, {k: str(v) for k, v in files.items()})

    def mend() -> None:
        late.mkdir()
        for have, want in files.items():
            shutil.copy(have, want)

    _watch_waits_then_renders(tmp_path, config, "cannot read CA certificate", mend)


def test_once_and_check_before_their_tls_files_exist_exit_3_and_render_once_they_do(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """What `watch` waits for is transient for the one-shot commands too: a TLS or password
    file not there yet was exit 2 ("bad configuration"), which a container's retry loop or
    the shipped units take as for good. Exit 3, as for etcd away; a pair that can never work
    (a cert without its key) stays 2."""
    import shutil

    late = tmp_path / "late"
    pki = secure_etcd.pki
    files = {pki.ca_cert: late / "ca.pem", pki.client_cert: late / "client.pem",
             pki.client_key: late / "client-key.pem",
             secure_etcd.password_file: late / "password"}
    config = _config_naming(tmp_path, secure_etcd, {k: str(v) for k, v in files.items()})
    for command in ("once", "check"):
        done = subprocess.run([sys.executable, "-m", "confsync", command, "--config",
                               str(config)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, (command, done.stderr)
        assert "cannot read CA certificate" in done.stderr, done.stderr
    late.mkdir()
    for have, want in list(files.items())[:3]:
        shutil.copy(have, want)
    done = _once(config)  # the password file still missing: the same
    assert done.returncode == 3 and "cannot read password" in done.stderr, done.stderr
    shutil.copy(secure_etcd.password_file, files[secure_etcd.password_file])
    done = _once(config)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "a=10.0.0.1:80\nb=10.0.0.2:80\n"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.startswith("key = ")) + "\n")
    done = _once(config)
    assert done.returncode == 2 and "give both cert and key" in done.stderr, done.stderr


def test_tls_files_under_a_user_not_known_yet_are_waited_for(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """`ca_cert = "~confsync/ca.pem"` for a user a package creates after confsync starts (or
    LDAP serves once sssd is up) was exit 2 at load, for `watch` too, never restarted by the
    units. The path is kept as written and expanded at each read: `once` exits 3 and `watch`
    waits, saying why, until the user exists; then it connects."""
    import shutil
    import uuid

    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    name = f"cst{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    home.mkdir()
    pki = secure_etcd.pki
    files = {pki.ca_cert: "ca.pem", pki.client_cert: "client.pem",
             pki.client_key: "client-key.pem", secure_etcd.password_file: "password"}
    for have, want in files.items():
        shutil.copy(have, home / want)
    config = _config_naming(tmp_path, secure_etcd,
                            {have: f"~{name}/{want}" for have, want in files.items()})
    done = _once(config)
    assert done.returncode == 3, done.stderr
    assert f"cannot expand '~{name}': no such user on this system (yet?)" in done.stderr
    try:
        _watch_waits_then_renders(
            tmp_path, config, f"'~{name}': no such user",
            lambda: subprocess.run(["useradd", "-M", "-N", "-d", str(home), "-s",
                                    "/usr/sbin/nologin", name], check=True))
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_registrar_started_before_its_tls_files_exist_registers_once_they_do(
        secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    """As for `watch`: a registrar whose certificate is written after it starts (at boot) was
    exit 2, never restarted by its unit, and the instance never joined its pool."""
    import shutil

    from tests.support.register import published

    late = tmp_path / "late"
    pki = secure_etcd.pki
    files = {pki.ca_cert: late / "ca.pem", pki.client_cert: late / "client.pem",
             pki.client_key: late / "client-key.pem"}
    proc, listener, password = _root_registrar(secure_etcd, tmp_path, "/tls-late",
                                               tuple(files.values()))
    key = "/tls-late/services/web/instances/web-1"
    store = EtcdStore(secure_etcd.settings(user="root", password_file=password))
    try:
        wait_for(lambda: "cannot read CA certificate" in proc.output(), "the missing file said")
        assert proc.proc.poll() is None, proc.output()[-2000:]
        late.mkdir()
        for have, want in files.items():
            shutil.copy(have, want)
        # the test's own client only now: a token unused for TOKEN_TTL s expires (a loaded
        # machine took longer than that to see the missing file said)
        client = store.new_client()
        try:
            wait_for(lambda: published(client, key) is not None, what="registered", timeout=20)
        finally:
            client.close()
    finally:
        store.close()
        proc.stop()
        listener.close()


def test_the_login_goes_to_the_endpoint_in_use_never_a_dead_one(
        secure_etcd: SecureEtcd) -> None:
    """The library logged in on an endpoint picked at random: with a dead one listed, a
    connection failed however many members were up (half the time here)."""
    dead = f"https://127.0.0.1:{free_port()}"  # nothing listens
    store = EtcdStore(secure_etcd.settings(endpoints=(dead, secure_etcd.member.endpoint)))
    try:
        for _ in range(8):
            client = store.new_client()
            try:
                assert client._current_endpoint_label == f"127.0.0.1:{secure_etcd.member.client_port}"
                assert client.get_response(b"/tls/backend/a").kvs
            finally:
                client.close()
    finally:
        store.close()
