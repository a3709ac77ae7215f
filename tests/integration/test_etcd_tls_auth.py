"""etcd with TLS (client certificates required) and auth on: confsync reads through both.

Certificates are made at test time (tests/support/certs.py); users and roles are created with the
etcdctl shipped next to the etcd binary. Simple tokens with a 2 s TTL make expiry testable.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from confsync.settings import EtcdSettings
from confsync.stores import ChangeBatch
from confsync.stores.etcd import EtcdStore
from tests.support.certs import Pki, make_pki
from tests.support.etcd_server import EtcdMember, start_single

pytestmark = pytest.mark.etcd

PASSWORD = "s3cret-Pa55-do-not-log"
ROOT = "root:r00t-pw"
TOKEN_TTL = 2


@dataclass
class SecureEtcd:
    member: EtcdMember
    pki: Pki
    etcdctl: str
    password_file: Path

    def ctl(self, *args: str, user: str | None = ROOT) -> str:
        argv = [self.etcdctl, "--endpoints", self.member.endpoint, "--cacert",
                str(self.pki.ca_cert), "--cert", str(self.pki.client_cert), "--key",
                str(self.pki.client_key), *(["--user", user] if user else []), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def settings(self, **kw: object) -> EtcdSettings:
        values: dict[str, object] = dict(
            endpoints=(self.member.endpoint,), ca_cert=self.pki.ca_cert,
            cert=self.pki.client_cert, key=self.pki.client_key, user="reader",
            password_file=self.password_file, timeout=3.0)
        values.update(kw)
        return EtcdSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def secure_etcd(etcd_binary: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    base = tmp_path_factory.mktemp("etcd-tls")
    pki = make_pki(base / "pki")
    member = start_single(etcd_binary, base / "etcd", scheme="https", extra_args=[
        "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca_cert), "--client-cert-auth",
        "--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)])
    password_file = base / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    etcd = SecureEtcd(member, pki, str(Path(etcd_binary).with_name("etcdctl")), password_file)
    try:
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
        yield etcd
    finally:
        member.stop()


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
