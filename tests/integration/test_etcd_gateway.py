"""`once` and `check` read etcd through its JSON gateway (confsync/stores/etcd_gateway.py).

Real etcd servers throughout: plain, TLS with client certificates and auth, a 3-member cluster
that loses its quorum, a frozen member, and etcd's gRPC proxy (which serves no gateway). Tests
of the store in this process make a fallback to gRPC fail loudly, so they prove the gateway
itself served.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confsync.errors import (
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    EXIT_WOULD_CHANGE,
    ConfigError,
    StoreUnavailable,
)
from confsync.settings import EtcdSettings
from confsync.stores import Snapshot
from confsync.stores.etcd import EtcdStore
from confsync.stores.etcd_gateway import EtcdGatewayStore
from tests.integration.test_etcd_tls_auth import PASSWORD, SecureEtcd, start_secure
from tests.support.cli import REPO, confsync, write_resource
from tests.support.daemon import read, wait_for
from tests.support.dns_server import SrvServer
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, discard, free_port, start_cluster
from tests.support.grpc_proxy import GrpcProxy

pytestmark = pytest.mark.etcd

GRPC_SNAPSHOT = EtcdStore.snapshot  # the reference, whatever no_grpc_fallback patches
HEAVY = ("grpc", "pyetcd", "google", "psutil", "prometheus_client", "watchdog", "dns",
         "http", "email", "ssl")  # the last three: 13 ms a plain-HTTP run does without
# ... and a run with nothing changed (issue 11): tests/unit/test_lazy_imports.py has the others
UNUSED_WHEN_UNCHANGED = ("base64", "struct", "jinja2", "tempfile", "argparse")


@pytest.fixture
def no_grpc_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway must serve: a read through the gRPC store fails the test."""
    def refuse(self: EtcdStore, prefixes: Any) -> Snapshot:
        raise AssertionError(f"fell back to gRPC for {len(prefixes)} prefixes")

    monkeypatch.setattr(EtcdStore, "snapshot", refuse)


def gateway(*endpoints: str, timeout: float = 5.0, **kw: Any) -> EtcdGatewayStore:
    return EtcdGatewayStore(EtcdSettings(endpoints=endpoints, timeout=timeout, **kw))


def grpc_snapshot(endpoint: str, prefixes: list[str]) -> Snapshot:
    store = EtcdStore(EtcdSettings(endpoints=(endpoint,)))
    try:
        return GRPC_SNAPSHOT(store, prefixes)
    finally:
        store.close()


# ---- what is read


def test_same_snapshot_as_the_grpc_store(etcd: EtcdMember, prefix: str) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/a/x", "1")
    c.put(prefix + "/a/empty", "")  # the gateway omits empty values
    c.put(prefix + "/b/y", b"\x00\xff binary")
    c.put(prefix + "/c-not-read", "no")
    raw_key = (prefix + "/b/raw-").encode() + b"\xff\xfe"  # not UTF-8
    c.put(raw_key, b"v")
    prefixes = [prefix + "/a/", prefix + "/b/", prefix + "/nothing/"]
    expected = grpc_snapshot(etcd.endpoint, prefixes)
    got = EtcdGatewayStore(EtcdSettings(endpoints=(etcd.endpoint,))).snapshot(prefixes)
    assert got == expected
    assert got.values[prefix + "/a/empty"] == b""
    assert got.values[raw_key.decode("utf-8", "surrogateescape")] == b"v"
    assert got.cluster_id != 0
    assert set(got.values) == {prefix + "/a/x", prefix + "/a/empty", prefix + "/b/y",
                               raw_key.decode("utf-8", "surrogateescape")}


def test_all_prefixes_at_one_revision_and_never_stale(
        etcd: EtcdMember, prefix: str, no_grpc_fallback: None) -> None:
    """A writer puts the same counter under two prefixes in one txn: every snapshot sees the
    two equal (one revision), and at least the last counter acknowledged before it began."""
    c = client(etcd.endpoint)
    a, b = prefix + "/a/n", prefix + "/b/n"
    c.put(a, "0")
    c.put(b, "0")
    acked = [0]
    stop = threading.Event()

    def writer() -> None:
        w = client(etcd.endpoint)
        i = 0
        while not stop.is_set() and i < 2000:
            i += 1
            w.transaction(compare=[], success=[w.transactions.put(a, str(i)),
                                               w.transactions.put(b, str(i))], failure=[])
            acked[0] = i

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    store = gateway(etcd.endpoint)
    try:
        seen = set()
        for _ in range(60):
            floor = acked[0]
            snap = store.snapshot([prefix + "/a", prefix + "/b"])
            assert snap.values[a] == snap.values[b], snap
            assert int(snap.values[a]) >= floor
            seen.add(snap.values[a])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert len(seen) > 1  # the writer really ran between snapshots


def test_more_prefixes_than_one_txn_holds(etcd: EtcdMember, prefix: str,
                                          no_grpc_fallback: None) -> None:
    c = client(etcd.endpoint)
    prefixes = [f"{prefix}/p{i:03d}/" for i in range(300)]  # etcd allows 128 ops per txn
    for i in range(0, 300, 100):
        c.transaction(compare=[], success=[c.transactions.put(f"{p}k", p) for p in
                                           prefixes[i:i + 100]], failure=[])
    got = gateway(etcd.endpoint).snapshot(prefixes)
    assert got == grpc_snapshot(etcd.endpoint, prefixes)
    assert len(got.values) == 300


def test_no_prefix_still_gives_the_position(etcd: EtcdMember, no_grpc_fallback: None) -> None:
    revision = int(client(etcd.endpoint).put("/gw-position", "x").header.revision)
    snap = gateway(etcd.endpoint).snapshot([])
    assert snap.values == {} and snap.revision >= revision and snap.cluster_id != 0


# ---- endpoints


def test_dead_first_endpoint_then_the_second_serves(
        etcd: EtcdMember, prefix: str, no_grpc_fallback: None,
        caplog: pytest.LogCaptureFixture) -> None:
    client(etcd.endpoint).put(prefix + "/k", "v")
    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING):
        snap = gateway(dead, etcd.endpoint).snapshot([prefix])
    assert snap.values == {prefix + "/k": b"v"}
    assert f"{dead}: Connection refused" in caplog.text


@pytest.mark.parametrize("second", ["etcd", "grpc_proxy"])
def test_frozen_first_endpoint_costs_one_timeout(
        second: str, request: pytest.FixtureRequest, etcd: EtcdMember,
        etcd_private: EtcdMember, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """The next endpoint serves: etcd through the gateway, a gRPC proxy through gRPC. Either
    way the frozen member costs one timeout: the gRPC fallback does not ask it again."""
    client(etcd.endpoint).put(prefix + "/k", "v")
    endpoint = request.getfixturevalue(second).endpoint
    etcd_private.freeze()
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="confsync"):
        snap = gateway(etcd_private.endpoint, endpoint, timeout=1.0).snapshot([prefix])
    elapsed = time.monotonic() - start
    assert snap.values == {prefix + "/k": b"v"}
    assert 1.0 <= elapsed < 1.8
    assert ("reading through gRPC" in caplog.text) == (second == "grpc_proxy")


def test_all_endpoints_dead_is_exit_3_in_one_timeout(etcd_private: EtcdMember,
                                                     tmp_path: Path) -> None:
    """A frozen member and a closed port: one timeout, and no second one spent on gRPC."""
    write_resource(tmp_path, "r", "{{ getv('/k') }}\n", f'dest = "{tmp_path}/out"\nkeys = ["/"]')
    etcd_private.freeze()
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    done = confsync("once", "--confdir", str(tmp_path), "--endpoints",
                    f"{etcd_private.endpoint},{dead}", env={"CONFSYNC_ETCD_TIMEOUT": "2s"})
    elapsed = time.monotonic() - start
    assert done.returncode == EXIT_STORE_UNAVAILABLE, done.stderr
    assert f"{etcd_private.endpoint}: no answer within 2s" in done.stderr
    assert f"{dead}: Connection refused" in done.stderr
    assert 2.0 <= elapsed < 3.5, done.stderr  # interpreter start-up included
    assert not (tmp_path / "out").exists()


@pytest.fixture
def leaderless(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """One member of a 3-member cluster whose two peers are stopped: port open, no leader."""
    members = start_cluster(etcd_binary, tmp_path / "cluster")
    try:
        a = members[0]
        wait_for(lambda: _serves(a), timeout=30, what="cluster quorum")
        members[1].stop()
        members[2].stop()
        yield a
    finally:
        discard(members)


def _serves(member: EtcdMember) -> bool:
    try:
        gateway(member.endpoint, timeout=1.0).snapshot(["/"])
        return True
    except StoreUnavailable:
        return False


def test_member_without_leader_answers_at_once_and_the_next_serves(
        leaderless: EtcdMember, etcd: EtcdMember, prefix: str, no_grpc_fallback: None) -> None:
    """The require-leader header reaches etcd: a leaderless member says so at once (without it
    a linearizable read waits for a leader until the timeout), and the next endpoint serves."""
    store = gateway(leaderless.endpoint, timeout=3.0)
    errors: list[str] = []

    def no_leader() -> bool:
        try:
            store.snapshot(["/"])
        except StoreUnavailable as exc:
            errors.append(str(exc))
            return "no leader" in str(exc)
        return False

    wait_for(no_leader, timeout=20, what=f"'no leader' from the member; got {errors[-1:]}")
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"{leaderless.endpoint}: etcdserver: no leader"):
        store.snapshot(["/"])
    assert time.monotonic() - start < 1.0

    client(etcd.endpoint).put(prefix + "/k", "v")
    start = time.monotonic()
    snap = gateway(leaderless.endpoint, etcd.endpoint, timeout=3.0).snapshot([prefix])
    assert snap.values == {prefix + "/k": b"v"}
    assert time.monotonic() - start < 1.0

    # The same request without the header waits (what the header saves).
    conn = http.client.HTTPConnection("127.0.0.1", leaderless.client_port, timeout=1.0)
    with pytest.raises(TimeoutError):
        conn.request("POST", "/v3/kv/range", json.dumps({"key": "Lw==", "range_end": "MA=="}))
        conn.getresponse()
    conn.close()


def test_srv_records_name_the_endpoints(etcd: EtcdMember, prefix: str,
                                        no_grpc_fallback: None) -> None:
    client(etcd.endpoint).put(prefix + "/k", "srv")
    with SrvServer({}) as dns:
        dns.resolver.records["_etcd-client._tcp.gw.confsync.test"] = [
            (10, 10, free_port(), "localhost."), (20, 10, etcd.client_port, "localhost.")]
        snap = EtcdGatewayStore(EtcdSettings(srv_domain="gw.confsync.test",
                                             srv_nameserver=dns.address)).snapshot([prefix])
    assert snap.values == {prefix + "/k": b"srv"}


# ---- no gateway: gRPC


@pytest.fixture
def grpc_proxy(etcd_binary: str, etcd: EtcdMember, tmp_path: Path) -> Iterator[GrpcProxy]:
    """etcd's gRPC proxy: gRPC only, 404 for every /v3 path of the gateway."""
    proxy = GrpcProxy(etcd_binary, [etcd], tmp_path / "proxy.log").start()
    yield proxy
    proxy.stop()


def test_no_gateway_falls_back_to_grpc(grpc_proxy: GrpcProxy, etcd: EtcdMember, prefix: str,
                                       tmp_path: Path) -> None:
    client(etcd.endpoint).put(prefix + "/k/a", "through-grpc")
    dest = tmp_path / "out"
    write_resource(tmp_path, "r", "{{ getv('/k/a') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\nprefix = "{prefix}"')
    done = confsync("once", "--confdir", str(tmp_path), "--endpoints", grpc_proxy.endpoint,
                    "--log-level", "debug")
    assert done.returncode == EXIT_OK, done.stderr
    assert read(dest) == "through-grpc\n"
    assert "/v3/kv/range answered HTTP 404" in done.stderr
    assert f"not served by {grpc_proxy.endpoint}; reading through gRPC" in done.stderr


@pytest.fixture
def web_page() -> Iterator[tuple[str, list[str]]]:
    """A web server that answers every POST with 200 and HTML; (its URL, the paths asked)."""
    import http.server

    asked: list[str] = []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    # (a short poll_interval: shutdown() waits up to one, 0.5 s by default)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_an_answer_that_is_not_etcd_is_named(web_page: tuple[str, list[str]]) -> None:
    """HTML with 200: no gateway, and no gRPC either (exit 3), both named."""
    url, asked = web_page
    with pytest.raises(StoreUnavailable, match=f"etcd {url}: read failed"):
        gateway(url, timeout=2.0).snapshot(["/x"])
    assert asked == ["/v3/kv/range"]


def test_no_password_over_plain_http(web_page: tuple[str, list[str]], tmp_path: Path) -> None:
    """Auth needs TLS, and the password is not sent at all: a configuration error, checked
    again where DNS SRV records name the endpoints (they are known only then)."""
    url, asked = web_page
    password = tmp_path / "password"
    password.write_text("plain-http-Pa55-gw\n")  # registered as a secret: unlike any word
    with pytest.raises(ConfigError, match="needs TLS"):
        gateway(url, user="reader", password_file=password).snapshot(["/x"])
    settings = EtcdSettings(endpoints=(url,), user="reader", password_file=password)
    with pytest.raises(ConfigError, match="needs TLS"):
        EtcdStore(settings).new_client()
    assert asked == []


@pytest.mark.parametrize("command", ["once", "watch", "register"])
def test_no_command_sends_a_password_in_clear_text(tmp_path: Path, command: str) -> None:
    """`watch` and `register` (gRPC) sent the password in an Authenticate call over a plain
    channel; `once` refused it as "store unavailable" (exit 3). Each is now exit 2 at start,
    and nothing reaches the endpoint."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    password = tmp_path / "password"
    password.write_text("clear-text-Pa55-cmd\n")
    config = tmp_path / "confsync.toml"
    config.write_text(f'[etcd]\nendpoints = ["http://127.0.0.1:{listener.getsockname()[1]}"]\n'
                      f'user = "reader"\npassword_file = "{password}"\n')
    write_resource(tmp_path / "cd", "app", "x\n", f'dest = "{tmp_path}/out"\nkeys = ["/x"]')
    try:
        result = confsync(command, "--config", str(config), "--confdir", str(tmp_path / "cd"),
                          timeout=30)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
    assert result.returncode == 2, result.stderr
    assert "needs TLS" in result.stderr and "clear-text-Pa55-cmd" not in result.stderr


# ---- TLS and auth


@pytest.fixture(scope="module")
def secure(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    """TLS with client certificates required, auth on (test_etcd_tls_auth.start_secure)."""
    etcd = start_secure(etcd_binary, tmp_path_factory.mktemp("etcd-gw-tls"))
    yield etcd
    etcd.member.stop()


def nocn(etcd: SecureEtcd, **kw: Any) -> EtcdSettings:
    """Settings with the client certificate that has no CommonName (the gateway takes it)."""
    return etcd.settings(cert=etcd.pki.nocn_client_cert, key=etcd.pki.nocn_client_key, **kw)


def test_tls_client_certificate_and_password(secure: SecureEtcd,
                                             no_grpc_fallback: None) -> None:
    snap = EtcdGatewayStore(nocn(secure)).snapshot(["/tls/"])
    assert snap.values == {"/tls/backend/a": b"10.0.0.1:80", "/tls/backend/b": b"10.0.0.2:80"}


def test_certificate_with_a_common_name_is_read_through_grpc(
        secure: SecureEtcd, caplog: pytest.LogCaptureFixture) -> None:
    """etcd refuses the gateway to a client certificate with a CommonName when auth is on."""
    with caplog.at_level(logging.DEBUG, logger="confsync"):
        snap = EtcdGatewayStore(secure.settings()).snapshot(["/tls/"])
    assert snap.values == {"/tls/backend/a": b"10.0.0.1:80", "/tls/backend/b": b"10.0.0.2:80"}
    assert "CommonName of client" in caplog.text
    assert "reading through gRPC" in caplog.text


def test_gateway_that_cannot_reach_its_own_grpc_is_read_through_grpc(
        etcd_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server certificate without clientAuth: the gateway's own dial to etcd fails."""
    etcd = start_secure(etcd_binary, tmp_path / "etcd", server_client_auth=False)
    try:
        with caplog.at_level(logging.DEBUG, logger="confsync"):
            snap = EtcdGatewayStore(nocn(etcd)).snapshot(["/tls/"])
    finally:
        etcd.member.stop()
    assert set(snap.values) == {"/tls/backend/a", "/tls/backend/b"}
    assert "reading through gRPC" in caplog.text


def test_role_limits_what_is_read(secure: SecureEtcd, no_grpc_fallback: None) -> None:
    with pytest.raises(StoreUnavailable, match="permission denied"):
        EtcdGatewayStore(nocn(secure)).snapshot(["/tls/", "/secret/"])


def test_wrong_password_and_missing_client_cert_are_named(
        secure: SecureEtcd, tmp_path: Path, no_grpc_fallback: None) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("Wr0ng-pa55word\n")
    endpoint = secure.member.endpoint
    with pytest.raises(StoreUnavailable, match=f"{endpoint}: .*authentication failed") as exc:
        EtcdGatewayStore(nocn(secure, password_file=wrong)).snapshot(["/tls/"])
    assert "Wr0ng" not in str(exc.value)
    with pytest.raises(StoreUnavailable, match=f"{endpoint}: .*(certificate|handshake|alert)"):
        EtcdGatewayStore(secure.settings(cert=None, key=None)).snapshot(["/tls/"])
    with pytest.raises(StoreUnavailable, match=f"{endpoint}: .*CERTIFICATE_VERIFY_FAILED"):
        EtcdGatewayStore(nocn(secure, ca_cert=None)).snapshot(["/tls/"])


def test_bad_tls_files_are_configuration_errors(secure: SecureEtcd, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read CA certificate"):
        EtcdGatewayStore(secure.settings(ca_cert=tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a usable CA certificate"):
        EtcdGatewayStore(secure.settings(ca_cert=junk))
    with pytest.raises(ConfigError, match="not a usable pair"):
        EtcdGatewayStore(secure.settings(key=secure.pki.ca_cert))
    with pytest.raises(ConfigError, match="both cert and key"):
        EtcdGatewayStore(secure.settings(key=None))


def test_once_through_tls_auth_and_a_wrong_password(secure: SecureEtcd,
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    write_resource(tmp_path / "cd", "b",
                   "{% for kv in gets('/*') %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/"]\nprefix = "/tls/backend"')
    config = tmp_path / "confsync.toml"
    s = nocn(secure)

    def once(password_file: Path) -> subprocess.CompletedProcess[str]:
        config.write_text(
            f'confdir = "{tmp_path / "cd"}"\nlog_level = "debug"\n[etcd]\n'
            f'endpoints = ["{secure.member.endpoint}"]\nca_cert = "{s.ca_cert}"\n'
            f'cert = "{s.cert}"\nkey = "{s.key}"\nuser = "reader"\n'
            f'password_file = "{password_file}"\ntimeout = "3s"\n')
        return confsync("once", "--config", str(config))

    done = once(secure.password_file)
    assert done.returncode == EXIT_OK, done.stderr
    assert read(dest) == "a=10.0.0.1:80\nb=10.0.0.2:80\n"
    assert "reading through gRPC" not in done.stderr
    assert PASSWORD not in done.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("Wr0ng-pa55word\n")
    done = once(wrong)
    assert done.returncode == EXIT_STORE_UNAVAILABLE, done.stderr
    assert "authentication failed" in done.stderr and "Wr0ng" not in done.stderr


# ---- the CLI, end to end


def test_once_and_check_end_to_end_without_grpc(etcd: EtcdMember, tmp_path: Path) -> None:
    """`check` says what would change (4), `once` writes it (0), `check` then agrees (0); and
    the one-shot process never imports the gRPC stack or the daemon's extras."""
    prefix = f"/gw-{uuid.uuid4().hex[:8]}"
    c = client(etcd.endpoint)
    for i in range(3):
        c.put(f"{prefix}/pool/s{i}", f"10.0.0.{i}:80")
    c.put(prefix + "/settings/name", "web")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path, "r",
                   "name {{ getv('/settings/name') }}\n"
                   "{% for kv in gets('/pool/*') %}server {{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/pool", "/settings"]\nprefix = "{prefix}"')
    args = ("--confdir", str(tmp_path), "--endpoints", etcd.endpoint)
    check = confsync("check", *args)
    assert check.returncode == EXIT_WOULD_CHANGE, check.stderr
    assert "+server 10.0.0.2:80" in check.stdout

    probe = (  # main(), not the entry point: that one leaves a one-shot run with os._exit
        "import sys, json\n"
        "from confsync.cli import main\n"
        "code = main(sys.argv[1:])\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", probe, "once", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"code": EXIT_OK, "heavy": []}, done.stderr
    assert read(dest) == "name web\nserver 10.0.0.0:80\nserver 10.0.0.1:80\nserver 10.0.0.2:80\n"
    assert confsync("check", *args).returncode == EXIT_OK
    # Nothing changed since (twice, with a memo of its own: the first run fills it): the
    # render memo stands in, and none of a render's imports are made for the read either.
    unchanged = probe.replace(repr(HEAVY), repr((*HEAVY, *UNUSED_WHEN_UNCHANGED)))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for _ in range(2):
        again = subprocess.run([sys.executable, "-c", unchanged, "once", *args], env=env,
                               capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(again.stdout.splitlines()[-1]) == {"code": EXIT_OK, "heavy": []}, \
        again.stderr


def test_a_read_given_up_mid_way_never_crashes_etcd(etcd_private: EtcdMember,
                                                    no_grpc_fallback: None) -> None:
    """etcd before 3.5.5 panics, and the member exits, when a read-only txn's client goes away
    while the txn runs (etcd-io/etcd#14110): the snapshot was one txn, so a `once` killed or
    timing out mid-read of a few thousand keys crashed the member it read from (seen in CI:
    the session's etcd gone mid-test). It reads range by range now, which returns the error."""
    c = client(etcd_private.endpoint)
    for first in range(0, 5000, 100):
        c.transaction(compare=[], success=[
            c.transactions.put(f"/big/k{i:05d}", "10.0.0.1:8080 " + "x" * 40)
            for i in range(first, first + 100)], failure=[])
    c.close()
    store = gateway(etcd_private.endpoint, timeout=0.004)
    for _ in range(40):
        with contextlib.suppress(StoreUnavailable):
            store.snapshot(["/big"])
    store.close()
    time.sleep(0.3)
    log = etcd_private.data_dir.parent / f"{etcd_private.name}.log"
    assert etcd_private.proc is not None and etcd_private.proc.poll() is None, \
        "etcd exited: " + (log.read_text()[:600] if log.exists() else "")
    assert gateway(etcd_private.endpoint).snapshot(["/big"]).values  # and still serves
