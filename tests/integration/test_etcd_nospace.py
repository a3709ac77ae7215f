"""etcd's NOSPACE alarm (its backend quota is full) under a running confsync.

etcd then refuses puts, lease grants and every transaction, a read-only one too (etcd 3.5),
while it serves ranges, watches and lease keepalives. What can go on must: a registration
already in etcd stays (and quiet), `once` and `check` read their snapshot, `watch` follows.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource
from tests.support.daemon import read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port, start_single
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]

QUOTA = 8 * 1024 * 1024


@pytest.fixture
def small_etcd(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """An etcd whose backend quota fills in a second (`fill_up`)."""
    member = start_single(etcd_binary, tmp_path / "etcd",
                          ["--quota-backend-bytes", str(QUOTA)])
    yield member
    member.stop()


def fill_up(member: EtcdMember) -> None:
    """Put large values until etcd refuses with "database space exceeded" (the alarm is up)."""
    c = client(member.endpoint)
    value = "x" * 900_000
    for n in range(4 * QUOTA // len(value)):
        try:
            c.put(f"/fill/{n}", value)
        except Exception as exc:
            assert "database space exceeded" in str(exc), exc
            return
    raise AssertionError("etcd never raised its NOSPACE alarm")


def ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_a_registration_is_kept_alive_quietly_through_a_nospace_alarm(
        small_etcd: EtcdMember, tmp_path: Path) -> None:
    """Keepalives work under the alarm; the read-back after each used a transaction, which the
    alarm refuses: every keepalive logged "etcd unreachable", then "etcd connected", and /ready
    flapped (2 lines per ttl/3: 120 a minute at ttl 3s)."""
    backend = HTTPBackend("web").start()
    port = free_port()
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {backend.port}\nid = "web-1"\nttl = "2s"\n'
                       'drain = "0s"\n'  # (no drain: the stop at the end deregisters at once)
                       '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n')
    proc = RegisterProcess(tmp_path / "conf", small_etcd.endpoint, "--hostname", "node-a",
                           "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "reg.log")
    try:
        c = client(small_etcd.endpoint)
        key = "/services/web/instances/web-1"
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registration")
        fill_up(small_etcd)
        mark = len(proc.output())
        deadline = time.monotonic() + 5  # 2.5 TTLs, 7 keepalives
        while time.monotonic() < deadline:
            assert ready(port)[0] == 200, ready(port)
            time.sleep(0.1)
        assert published(c, key) is not None  # the lease lives on
        assert "etcd unreachable" not in proc.output()[mark:], proc.output()[mark:]
    finally:
        proc.stop()
        backend.stop()


def test_once_and_check_read_through_a_nospace_alarm(small_etcd: EtcdMember,
                                                     tmp_path: Path) -> None:
    """The gateway snapshot is a txn of ranges, which the alarm refuses: `once` exited 3,
    "store unavailable", from an etcd that serves every read."""
    c = client(small_etcd.endpoint)
    c.put("/k/a", "1")
    c.put("/j/b", "2")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "list",
                   "{% for kv in gets('/k/*') + gets('/j/*') %}{{ kv.key }}={{ kv.value }}\n"
                   "{% endfor %}", f'dest = "{dest}"\nkeys = ["/k", "/j"]')
    fill_up(small_etcd)
    for command, status in (("check", 4), ("once", 0), ("check", 0)):
        done = subprocess.run(
            [sys.executable, "-m", "confsync", command, "--confdir", str(tmp_path / "cd"),
             "--endpoints", small_etcd.endpoint],
            capture_output=True, text=True, cwd=REPO, timeout=30)
        assert done.returncode == status, (command, done.stdout, done.stderr)
    assert read(dest) == "/k/a=1\n/j/b=2\n"


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_change_the_nospace_alarm_refuses_is_said_as_a_refusal_not_an_outage(
        small_etcd: EtcdMember, tmp_path: Path) -> None:
    """The alarm refuses the registrar's writes (a check went down: the delete; up again: the
    lease grant). etcd answers all the while, yet that was said as "etcd unreachable", /ready
    "etcd not connected" and confsync_register_etcd_connected 0, sending operators after a
    network fault. The stale key still goes with the lease, and once an operator frees space
    and disarms the alarm, the instance registers again by itself."""
    sick = tmp_path / "sick"
    port = free_port()
    write_registration(tmp_path / "conf", "web", (
        'service = "web"\nport = 80\nid = "web-1"\naddress = "10.0.0.1"\nttl = "3s"\n'
        f'drain = "0s"\n[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{sick}"]\n'
        'interval = "100ms"\nrise = 1\nfall = 1\n'))
    proc = RegisterProcess(tmp_path / "conf", small_etcd.endpoint, "--hostname", "node-a",
                           "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "reg.log")
    key = "/services/web/instances/web-1"
    refusal = f"etcd refuses writing {key} (etcd's NOSPACE alarm): RESOURCE_EXHAUSTED"
    try:
        c = client(small_etcd.endpoint)
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registration")
        fill_up(small_etcd)
        sick.write_text("")
        # The delete is refused: the key goes with the lease, which is not renewed.
        wait_for(lambda: published(c, key) is None, timeout=3 + 3, interval=0.1,
                 what=f"the stale key gone with its lease\n{proc.output()[-2000:]}")
        sick.unlink()  # up again: the lease grant is refused
        wait_for(lambda: "registrations\": {\"web\": \"ready\"" in ready(port)[1], timeout=10,
                 what="ready to publish")
        for _ in range(20):  # two seconds: steadily said so
            status, body = ready(port)
            assert status == 503 and refusal in body, body
            assert _metric(port, "confsync_register_etcd_connected") == 1
            time.sleep(0.1)
        assert _metric(port, "confsync_register_etcd_writes_refused") == 1
        assert "etcd unreachable" not in proc.output(), proc.output()[-3000:]
        assert "its NOSPACE alarm is raised" in proc.output()
        # An operator frees space and disarms the alarm.
        c.delete_prefix("/fill/")
        c.compact(int(c.get_response("/fill/").header.revision), physical=True)
        c.defragment()
        for alarm in c.list_alarms():  # (member 0 disarms nothing: each member's, as etcdctl)
            c.disarm_alarm(alarm.member_id)
        assert not list(c.list_alarms())
        wait_for(lambda: published(c, key) is not None, timeout=10,
                 what=f"registered again\n{proc.output()[-2000:]}")
        wait_for(lambda: ready(port)[0] == 200, timeout=10, what="ready again")
        assert "etcd accepts our writes again" in proc.output()
    finally:
        proc.stop()
