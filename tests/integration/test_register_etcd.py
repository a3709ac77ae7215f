"""`confsync register` against a real etcd: the lease, checks, maintenance, drain, ownership."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from confsync.instances import validate_instance
from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


@pytest.fixture
def prefix() -> str:
    return f"/r{uuid.uuid4().hex[:10]}"


def _registration(port: int, **fields: Any) -> str:
    """No drain unless asked for: most tests stop their registrar only to clean up, and a
    drain there is a second of waiting (the tests of the stop path set it)."""
    checks = fields.pop("checks", '[[check]]\ntype = "tcp"\ninterval = "100ms"\nrise = 1\n')
    settings = {"service": "web", "port": port, "id": "web-1", "ttl": "2s", "drain": "0s",
                **fields}
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()) + checks


def _start(procs: list[RegisterProcess], tmp_path: Path, etcd: EtcdMember, prefix: str,
           *args: str, name: str = "r") -> RegisterProcess:
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix, *args,
                           log=tmp_path / f"{name}.log")
    procs.append(proc)
    return proc


def _key(prefix: str) -> str:
    return f"{prefix}/services/web/instances/web-1"


def test_registration_appears_with_the_template_schema_and_owner(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    write_registration(tmp_path / "conf", "web", _registration(backend.port, weight=50))
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a")
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    value = published(c, _key(prefix))
    assert value == {"address": "127.0.0.1", "port": backend.port, "weight": 50,
                     "state": "ready", "host": "node-a"}
    # Detected from an etcd on this host: published, with a warning that only this host
    # can reach it (the log's writer thread may write it after the key is in etcd).
    warning = (f"WARNING register: publishing 127.0.0.1, a loopback address (the one this "
               f"host uses to reach etcd), for {_key(prefix)}: only consumers on this host can "
               "reach it; set `address` in the registration")
    wait_for(lambda: warning in proc.output(), timeout=10,
             what=f"the loopback warning\n{proc.output()[-2000:]}")
    validate_instance("/services/web/instances/web-1", value)
    _raw, meta = c.get(_key(prefix))
    assert meta.lease_id != 0, "the key lives on a lease"


def test_sigkill_of_the_registrar_drops_the_key_within_ttl_plus_1s(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    write_registration(tmp_path / "conf", "web", _registration(backend.port))
    proc = _start(procs, tmp_path, etcd, prefix)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    time.sleep(1.5)  # a few keepalives went out: the TTL counts from the last one
    proc.proc.kill()
    killed = time.monotonic()
    wait_for(lambda: published(c, _key(prefix)) is None, timeout=10, interval=0.05,
             what="key gone")
    assert time.monotonic() - killed <= 2 + 1 + 0.5, "ttl (2s) + 1s, with polling slack"


def test_etcd_down_longer_than_ttl_then_back_registers_again(
        etcd_private: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    maint = tmp_path / "maint"
    write_registration(tmp_path / "conf", "web",
                       _registration(backend.port, maintenance_file=str(maint)))
    proc = _start(procs, tmp_path, etcd_private, prefix)
    c = client(etcd_private.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    c.close()
    etcd_private.kill()
    maint.touch()  # changes while etcd is away are published when it is back
    wait_for(lambda: "etcd unreachable" in proc.output(), timeout=15, what="outage noticed")
    time.sleep(3.5)  # longer than the 2 s ttl
    etcd_private.start()
    c = client(etcd_private.endpoint)
    wait_for(lambda: (published(c, _key(prefix)) or {}).get("state") == "maint", timeout=20,
             what="registered again, in maintenance")
    # The lease is lost meanwhile (revoked here, as when it expires): a new lease, a fresh put.
    _, meta = c.get(_key(prefix))
    c.revoke_lease(meta.lease_id)
    wait_for(lambda: published(c, _key(prefix)) is not None
             and c.get(_key(prefix))[1].lease_id != meta.lease_id, timeout=10,
             what="registered again on a new lease")
    assert "expired or was revoked" in proc.output()
    assert proc.proc.poll() is None


def test_ready_notices_etcd_gone_while_nothing_is_registered(
        etcd_private: EtcdMember, prefix: str, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """With every check down there is no lease, so no keepalive: nothing else asked etcd, and
    /ready said 200 (etcd reachable) for as long as etcd stayed away (found by
    test_register_chaos.py, seed 11)."""
    from tests.support.http_probe import ready

    write_registration(tmp_path / "conf", "web", _registration(free_port(), ttl="3s"))
    metrics = free_port()
    _start(procs, tmp_path, etcd_private, prefix, "--metrics-address", f"127.0.0.1:{metrics}")
    wait_for(lambda: ready(metrics)[1].get("why", {}).get("web", "").startswith("check 0 down"),
             timeout=15, what="the check down, nothing registered")
    # (Waited for: on a loaded machine one probe of a live etcd can miss its 1 s timeout.)
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10, what="ready with etcd up")
    etcd_private.kill()
    # A probe every ttl/3 (1 s), failing within the call timeout (1 s), and slack.
    wait_for(lambda: ready(metrics)[0] == 503, timeout=6, interval=0.1,
             what=f"/ready 503 with etcd gone: {ready(metrics)}")
    assert "etcd not connected" in ready(metrics)[1]["reasons"][0]
    etcd_private.start()
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10, interval=0.1,
             what=f"/ready 200 with etcd back: {ready(metrics)}")


def test_a_write_on_a_lease_revoked_from_outside_registers_again_at_once(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """The lease revoked (or etcd recreated) and a change to write before the next keepalive:
    etcd refuses the put (NOT_FOUND: requested lease not found). That was taken for etcd
    unreachable (a WARNING, /ready 503, the endpoint given up) and retried on the dead lease
    until the keepalive, ttl/3 later, noticed (found by test_register_chaos.py, seed 41)."""
    from tests.support.http_probe import ready

    maint = tmp_path / "maint"
    write_registration(tmp_path / "conf", "web", _registration(
        80, ttl="12s", maintenance_file=str(maint), checks=""))
    metrics = free_port()
    proc = _start(procs, tmp_path, etcd, prefix, "--metrics-address", f"127.0.0.1:{metrics}")
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    # Just granted: the next keepalive is about ttl/3 = 4 s away.
    c.revoke_lease(c.get(_key(prefix))[1].lease_id)
    maint.touch()
    changed = time.monotonic()
    statuses = []
    while (published(c, _key(prefix)) or {}).get("state") != "maint":
        statuses.append(ready(metrics)[0])
        assert time.monotonic() - changed < 10, proc.output()[-2000:]
        time.sleep(0.05)
    assert time.monotonic() - changed < 2.0, "at once, not at the next keepalive (4 s)"
    assert c.get(_key(prefix))[1].lease_id != 0
    assert "is gone (revoked, or etcd recreated)" in proc.output()
    assert "etcd unreachable" not in proc.output() and 503 not in statuses, proc.output()


def test_a_stop_after_the_lease_was_revoked_from_outside_is_no_failure(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """The lease gone before the stop (revoked, expired while the process was stopped, etcd
    recreated): its keys went with it. The final revoke's NOT_FOUND was logged as a WARNING
    that the keys would go after the TTL."""
    write_registration(tmp_path / "conf", "web",
                       _registration(backend.port, ttl="30s", drain="0s"))
    proc = _start(procs, tmp_path, etcd, prefix)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    lease = c.get(_key(prefix))[1].lease_id
    c.revoke_lease(lease)  # the next keepalive is ttl/3 = 10 s away: the stop comes first
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert f"lease {lease:x} was gone already" in proc.output()
    assert "could not revoke" not in proc.output()


@pytest.mark.parametrize("exec_mode", [False, True], ids=["plain", "exec"])
def test_a_stop_with_etcd_gone_warns_which_keys_outlive_it(
        etcd_private: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess], exec_mode: bool) -> None:
    """A revoke that really fails while a key is on the lease still warns, naming the key,
    and the exit status says so (3: it was 0, as after a clean deregistration). In exec mode
    too: it was the child's death by our SIGTERM, 143, a success for the shipped unit
    (SuccessExitStatus=143), so a `systemctl stop` that left the key looked clean."""
    write_registration(tmp_path / "conf", "web",
                       _registration(backend.port, ttl="30s", drain="0s"))
    proc = _start(procs, tmp_path, etcd_private, prefix,
                  *(("--exec", "sleep 600") if exec_mode else ()))
    c = client(etcd_private.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    c.close()
    etcd_private.kill()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 3
    line = next((x for x in proc.output().splitlines() if "could not revoke" in x), "")
    assert " WARNING register: could not revoke" in line, proc.output()
    assert line.endswith(f"its keys go within 30s, when it lapses: {_key(prefix)}"), line


def test_a_stop_warns_of_a_key_whose_put_had_no_answer(
        etcd_private: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """A put sent as etcd died (or froze) may have been committed: the stop's warning named
    only the keys whose put was answered, and with no other key the exit was 0 ("no key of
    ours is on it") while the key stayed on the lease for its TTL (seen in CI under load)."""
    late = free_port()
    conf = tmp_path / "conf"
    write_registration(conf, "web", _registration(backend.port, ttl="30s", drain="0s"))
    write_registration(conf, "late", _registration(
        late, id="web-2", ttl="30s", drain="0s",
        checks='[[check]]\ntype = "tcp"\ninterval = "100ms"\nrise = 1\n'))
    proc = _start(procs, tmp_path, etcd_private, prefix)
    c = client(etcd_private.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    c.close()
    etcd_private.freeze()
    try:
        with socket.create_server(("127.0.0.1", late)):
            wait_for(lambda: "web-2: absent -> ready" in proc.output(), timeout=10,
                     what="the second instance's check passing")
            time.sleep(0.3)  # its put is sent, and hangs in the frozen etcd
            proc.signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 3, proc.output()
    finally:
        etcd_private.thaw()
    line = next((x for x in proc.output().splitlines() if "could not revoke" in x), "")
    assert line.endswith(f"{_key(prefix)}, {prefix}/services/web/instances/web-2"), line


def test_a_recreated_etcd_reusing_our_revision_for_another_hosts_value(
        etcd_private: EtcdMember, prefix: str, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """etcd recreated (a new data dir): revisions start again from 1, so another host's value
    can sit at the very revision of our last write in the old cluster. Writes guarded by the
    revision alone then replaced it (test_register_chaos.py, seed 63)."""
    import shutil

    write_registration(tmp_path / "conf", "web", _registration(80, ttl="3s", checks=""))
    proc = _start(procs, tmp_path, etcd_private, prefix, "--hostname", "node-a")
    c = client(etcd_private.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    ours = int(c.get(_key(prefix))[1].mod_revision)
    c.close()
    proc.signal(signal.SIGSTOP)  # so that nothing is written before the other host
    try:
        etcd_private.kill()
        shutil.rmtree(etcd_private.data_dir)
        etcd_private.start()
        c = client(etcd_private.endpoint)
        other = json.dumps({"address": "10.0.0.9", "port": 80, "weight": 100, "state": "ready",
                            "host": "node-b"})
        revision = int(c.get_response(f"{prefix}/filler").header.revision)
        while revision < ours - 1:
            revision = int(c.put(f"{prefix}/filler", "x").header.revision)
        c.put(_key(prefix), other)
        assert int(c.get(_key(prefix))[1].mod_revision) == ours
    finally:
        proc.signal(signal.SIGCONT)
    wait_for(lambda: "is registered by host 'node-b'" in proc.output(), timeout=10,
             what=f"the conflict reported\n{proc.output()[-2000:]}")
    time.sleep(1.0)
    assert c.get(_key(prefix))[0] == other.encode(), proc.output()[-2000:]


def test_a_key_deleted_or_changed_under_a_live_lease_is_written_again(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """An `etcdctl del`, or a restore that keeps the lease but not the key, must not leave a
    healthy instance out of its pool for good while the keepalives go on succeeding."""
    write_registration(tmp_path / "conf", "web", _registration(backend.port, ttl="3s"))
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a")
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    value = published(c, _key(prefix))
    c.delete(_key(prefix))
    wait_for(lambda: published(c, _key(prefix)) == value, timeout=5, interval=0.05,
             what="deleted key written again within a keepalive period")
    stale = {**value, "state": "drain"}  # type: ignore[dict-item]
    c.put(_key(prefix), json.dumps(stale))  # no lease, stale content, still our host
    wait_for(lambda: published(c, _key(prefix)) == value
             and c.get(_key(prefix))[1].lease_id != 0, timeout=5, interval=0.05,
             what="changed key written again, on the lease")
    out = proc.output()
    assert "was deleted; writing it again" in out and "was changed under us" in out, out
    assert proc.proc.poll() is None


@pytest.mark.parametrize("at_start", [False, True], ids=["while-running", "at-start"])
def test_this_hosts_value_on_no_lease_is_deleted_while_the_checks_are_down(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess],
        at_start: bool) -> None:
    """A "ready" naming this host, on no lease (a backup restored, a hand-made copy), while
    the instance's checks are down: no lease takes it away, and the read-back only covered
    keys that were registered, so it stayed, sending traffic to an unhealthy instance for as
    long as the checks stayed down (test_register_chaos.py, seed 12). A key on a lease (an
    earlier run killed) is left to its lease: a restart must not flap a healthy instance."""
    sick = tmp_path / "sick"
    sick.touch()
    # (drain = "1s", as before the default went to 0 s: with none, the registrar's own delete
    # at deregistration came after the test's put of the stale value, once in CI, and took it
    # away by that path instead of the one this test is about)
    write_registration(tmp_path / "conf", "web", _registration(
        free_port(), ttl="3s", drain="1s", checks=(
        f'[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{sick}"]\n'
        'interval = "100ms"\nrise = 1\nfall = 1\n')))
    c = client(etcd.endpoint)
    stale = json.dumps({"address": "127.0.0.1", "port": 80, "weight": 100, "state": "ready",
                        "host": "node-a"})
    if at_start:
        c.put(_key(prefix), stale)
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a")
    if not at_start:
        sick.unlink()
        wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
        sick.touch()
        wait_for(lambda: published(c, _key(prefix)) is None, timeout=5, what="deregistered")
        c.put(_key(prefix), stale)
    # Read back every ttl/3 (1 s), with slack.
    wait_for(lambda: published(c, _key(prefix)) is None, timeout=4, interval=0.05,
             what=f"the stale value deleted\n{proc.output()[-2000:]}")
    assert "holds this host's value on no lease" in proc.output()
    # Another host's value is not ours to delete.
    other = stale.replace("node-a", "node-b")
    c.put(_key(prefix), other)
    time.sleep(2.5)
    assert c.get(_key(prefix))[0] == other.encode()
    assert proc.proc.poll() is None


def test_another_hosts_value_is_never_deleted_when_the_checks_go_down(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """Another host registers the key (a moved instance, an operator) and this one's checks
    go down before its read-back noticed: the delete was refused (the key changed), the
    conflict forgot the revision it was guarded with, and the retry deleted unguarded,
    taking the other host's registration away (found reading the code behind a
    test_register_chaos.py run; that test now checks other hosts' values are kept)."""
    sick = tmp_path / "sick"
    write_registration(tmp_path / "conf", "web", _registration(80, ttl="3s", checks=(
        f'[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{sick}"]\n'
        'interval = "100ms"\nrise = 1\nfall = 1\n')))
    from tests.support.http_probe import ready

    metrics = free_port()
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a",
                  "--metrics-address", f"127.0.0.1:{metrics}")
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    other = json.dumps({"address": "10.0.0.9", "port": 80, "weight": 100, "state": "ready",
                        "host": "node-b"})
    c.put(_key(prefix), other)
    sick.touch()  # down within 0.1-0.2 s: well before the next read-back (ttl/3 = 1 s)
    time.sleep(3.0)  # read-backs and retries: three keepalive periods
    assert c.get(_key(prefix))[0] == other.encode(), proc.output()[-2000:]
    assert "is registered by host 'node-b'; not ours to delete" in proc.output()
    # Nothing of ours is refused: to be absent is what this registrar wants.
    wait_for(lambda: ready(metrics)[0] == 200, timeout=5, what=f"/ready {ready(metrics)}")
    # Once this host's checks pass again, the other host's live key is a conflict.
    sick.unlink()
    wait_for(lambda: ready(metrics)[0] == 503, timeout=5, what=f"/ready {ready(metrics)}")
    assert c.get(_key(prefix))[0] == other.encode()
    c.delete(_key(prefix))
    wait_for(lambda: (published(c, _key(prefix)) or {}).get("host") == "node-a", timeout=5,
             what="ours again once the other host's key is gone")
    assert proc.proc.poll() is None


def test_a_conflict_on_one_key_does_not_delay_the_others(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """A key another host holds is retried every ttl/3; that retry used to hold the whole
    registrar back, so every change of its other registrations (a check down: the instance
    out of the pool) waited for it, up to ttl/3 (4 s here, 10 s at ttl 30 s)."""
    for name in ("x", "y"):
        write_registration(tmp_path / "conf", name, _registration(
            80, service=name, ttl="12s", checks=(
                f'[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{tmp_path}/sick-'
                f'{name}"]\ninterval = "100ms"\nrise = 1\nfall = 1\n')))
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a")
    c = client(etcd.endpoint)
    kx, ky = (f"{prefix}/services/{n}/instances/web-1" for n in ("x", "y"))
    wait_for(lambda: published(c, kx) is not None and published(c, ky) is not None,
             timeout=15, what="both registered")
    c.put(kx, json.dumps({"address": "10.0.0.9", "port": 80, "weight": 100, "state": "ready",
                          "host": "node-b"}))
    wait_for(lambda: "is registered by host 'node-b'" in proc.output(), timeout=10,
             what="the conflict")  # (read back within ttl/3)
    for want_present in (False, True):
        sick = tmp_path / "sick-y"
        sick.unlink() if want_present else sick.touch()
        changed = time.monotonic()
        wait_for(lambda w=want_present: (published(c, ky) is not None) == w, timeout=10,
                 interval=0.02, what="y changed")
        assert time.monotonic() - changed < 2.0, "not held back by x's conflict (ttl/3 = 4 s)"
    assert published(c, kx)["host"] == "node-b"  # type: ignore[index]


def test_a_frozen_first_endpoint_never_lets_the_lease_lapse(
        cluster: list[EtcdMember], prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """The member the registrar talks to hangs (SIGSTOP: no answer, no error) while the other
    two keep quorum: keepalives must move on to them before the lease runs out."""
    a, b, _ = cluster
    write_registration(tmp_path / "conf", "web", _registration(backend.port, ttl="3s"))
    proc = RegisterProcess(tmp_path / "conf", ",".join(m.endpoint for m in cluster),
                           "--prefix", prefix, log=tmp_path / "r.log")
    procs.append(proc)
    cb = client(b.endpoint)
    wait_for(lambda: published(cb, _key(prefix)) is not None, timeout=15, what="registration")
    lease = cb.get(_key(prefix))[1].lease_id
    assert lease != 0, "written on the lease only (it was once put on none first)"
    a.freeze()
    try:
        gone, answered = [], 0
        deadline = time.monotonic() + 10  # more than three ttls
        while time.monotonic() < deadline:
            try:
                value = published(cb, _key(prefix))
            except Exception:  # "leader changed" while B and C elect a leader: no answer,
                value = {}     # which is not absence; the client then refuses B for 300 s,
                cb = client(b.endpoint)  # so a new one
            else:
                answered += 1
            if value is None:
                gone.append(round(deadline - time.monotonic(), 1))
            time.sleep(0.2)
        assert not gone, f"out of the pool while a quorum was up\n{proc.output()[-3000:]}"
        assert answered >= 20, f"only {answered} reads answered"
        wait_for(lambda: cb.get(_key(prefix))[1].lease_id == lease, timeout=5,
                 what="the same lease, kept alive")
    finally:
        a.thaw()


class _Scripted(ThreadingHTTPServer):
    daemon_threads = True
    script: list[int]
    served: int


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: _Scripted

    def do_GET(self) -> None:
        s = self.server
        status = s.script[s.served] if s.served < len(s.script) else s.script[-1]
        s.served += 1
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_rise_and_fall_hysteresis_on_a_flapping_check(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    ok, bad = 200, 500
    # rise 3, fall 3: up after 3 passes; short failure runs (1 or 2) change nothing; 3 take
    # it down; 2 passes are not enough to come back, the third is.
    script = [ok, ok, ok, bad, bad, ok, bad, ok, bad, bad, ok, bad, bad, bad, ok, ok, bad, ok,
              ok, ok]
    server = _Scripted(("127.0.0.1", 0), _ScriptedHandler)
    server.script, server.served = script, 0
    with _serving(server) as port:
        write_registration(tmp_path / "conf", "web", _registration(
            port, checks=_http_check(rise=3, fall=3)))
        proc = _start(procs, tmp_path, etcd, prefix)
        wait_for(lambda: server.served > len(script) + 3, timeout=30, what="script played")
        wait_for(lambda: proc.output().count(" -> ready (") == 2, timeout=5,
                 what="second registration")
        log = proc.output()
        assert log.count("absent -> ready (") == 2, log
        assert log.count("ready -> absent (") == 1, log
        c = client(etcd.endpoint)
        wait_for(lambda: published(c, _key(prefix)) is not None, timeout=5, what="registered")


@contextlib.contextmanager
def _serving(server: ThreadingHTTPServer) -> Iterator[int]:
    """Serve on a thread; yield the port; shut down after."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _http_check(**fields: Any) -> str:
    settings = {"type": "http", "path": "/healthz", "interval": "100ms", **fields}
    return "[[check]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


class _Trickling(ThreadingHTTPServer):
    daemon_threads = True
    trickle = False
    stop = threading.Event()


class _TricklingHandler(BaseHTTPRequestHandler):
    """Healthy until told to trickle: then a header byte every 0.2 s, each well within the
    probe's socket timeout, so only a deadline on the whole probe notices."""

    server: _Trickling

    def do_GET(self) -> None:
        if not self.server.trickle:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not self.server.stop.wait(0.2):
            try:
                self.wfile.write(b"X")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_probe_that_hangs_past_its_timeout_takes_the_instance_down(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    server = _Trickling(("127.0.0.1", 0), _TricklingHandler)
    server.stop = threading.Event()
    with _serving(server) as port:
        write_registration(tmp_path / "conf", "web", _registration(
            port, checks=_http_check(timeout="500ms", rise=1, fall=2)))
        proc = _start(procs, tmp_path, etcd, prefix)
        c = client(etcd.endpoint)
        wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
        server.trickle = True
        hung = time.monotonic()
        try:
            # interval 0.1 + timeout 0.5 + grace 1 s, then fall = 2 stalled results 0.1 s apart.
            wait_for(lambda: published(c, _key(prefix)) is None, timeout=8, interval=0.05,
                     what="a hung probe counted as failing")
        finally:
            server.stop.set()
        assert time.monotonic() - hung < 4.0
        assert "is stuck" in proc.output()
        assert proc.proc.poll() is None


def test_maintenance_file_and_on_unhealthy_maint(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    maint = tmp_path / "maint"
    write_registration(tmp_path / "conf", "web", _registration(
        backend.port, maintenance_file=str(maint), on_unhealthy="maint",
        checks=f'[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{tmp_path}/sick"]\n'
               'interval = "100ms"\nrise = 1\nfall = 1\n'))
    (tmp_path / "sick").touch()  # never healthy yet: not registered, not even as "maint"
    proc = _start(procs, tmp_path, etcd, prefix)
    c = client(etcd.endpoint)

    def state() -> str | None:
        return (published(c, _key(prefix)) or {}).get("state")

    # (The state change would be logged at the first tick, before the check's first result.)
    wait_for(lambda: "check 0 down" in proc.output() and "etcd connected" in proc.output(),
             timeout=15, what="the first failure, with etcd connected")
    assert "-> maint" not in proc.output()
    assert published(c, _key(prefix)) is None
    (tmp_path / "sick").unlink()
    wait_for(lambda: state() == "ready", timeout=15, what="ready")
    maint.touch()
    wait_for(lambda: state() == "maint", timeout=5, what="maint while the file exists")
    maint.unlink()
    wait_for(lambda: state() == "ready", timeout=5, what="ready again")
    (tmp_path / "sick").touch()  # the exec check fails: on_unhealthy = "maint" keeps the key
    wait_for(lambda: state() == "maint", timeout=5, what="maint while unhealthy")


def test_sigterm_drains_then_deletes_then_exits_0(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    write_registration(tmp_path / "conf", "web", _registration(backend.port, drain="1500ms"))
    proc = _start(procs, tmp_path, etcd, prefix)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    seen: list[tuple[float, str | None]] = []
    events, cancel = c.watch(_key(prefix))
    proc.signal(signal.SIGTERM)
    sent = time.monotonic()
    for event in events:
        value = json.loads(event.value) if event.value else None
        seen.append((time.monotonic() - sent, value["state"] if value else None))
        if value is None:
            break
    cancel()
    assert [s for _, s in seen] == ["drain", None], seen
    assert seen[1][0] - seen[0][0] >= 1.3, f"drained about 1.5 s: {seen}"
    assert proc.wait() == 0
    assert c.get(_key(prefix))[0] is None


def test_registrar_of_another_host_is_refused_same_host_takes_over(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    path = write_registration(tmp_path / "conf", "web", _registration(backend.port, ttl="10s"))
    first = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a", name="a")
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registration")
    other = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                            log=tmp_path / "b.log", env={"CONFSYNC_REGISTER_HOSTNAME": "node-b"})
    procs.append(other)
    assert other.wait(timeout=30) == 2  # after one lease ttl: node-a kept renewing it
    out = other.output()
    assert "waiting up to 11s for its lease to lapse" in out, out
    assert str(path) in out and _key(prefix) in out and "'node-a'" in out, out
    assert published(c, _key(prefix))["host"] == "node-a"  # type: ignore[index]
    # The same host restarted (the old process killed, its 10 s lease still live): taken over
    # at once, on the new process's lease.
    _, before = c.get(_key(prefix))
    first.proc.kill()
    restarted = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-a", name="a2")
    wait_for(lambda: c.get(_key(prefix))[1] is not None
             and c.get(_key(prefix))[1].lease_id != before.lease_id, timeout=8,
             what="taken over before the old lease's ttl")
    assert restarted.proc.poll() is None


def test_a_dead_hosts_leftover_key_is_waited_out_not_refused(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """A host that died (or was replaced) leaves its key until its lease lapses; a registrar
    starting meanwhile with the same id must not exit 2 for good (the unit does not restart
    exit 2)."""
    write_registration(tmp_path / "conf", "web", _registration(backend.port))
    c = client(etcd.endpoint)
    lease = c.lease(3)  # never renewed: its registrar is gone
    c.put(_key(prefix), json.dumps({"address": "10.0.0.9", "port": 80, "weight": 100,
                                    "state": "ready", "host": "node-old"}), lease=lease)
    started = time.monotonic()
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-new")
    wait_for(lambda: (published(c, _key(prefix)) or {}).get("host") == "node-new", timeout=10,
             what="registered once the dead host's lease lapsed")
    assert time.monotonic() - started < 3 + 1 + 3, "within the old lease's ttl, plus slack"
    assert proc.proc.poll() is None
    assert "'node-old'" in proc.output()


def test_health_stays_200_while_a_dead_hosts_lease_is_waited_out(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """The wait for a dead host's lease (its TTL, before the loop starts) is the registrar
    working: /health must not fail meanwhile. Nothing beat during it, so /health answered 503
    once it passed 10 s, and a liveness probe restarted a registrar that was only waiting (a
    restart waits again)."""
    from tests.support.http_probe import probe

    write_registration(tmp_path / "conf", "web", _registration(backend.port))
    c = client(etcd.endpoint)
    lease = c.lease(15)  # never renewed: its registrar is gone
    c.put(_key(prefix), json.dumps({"address": "10.0.0.9", "port": 80, "weight": 100,
                                    "state": "ready", "host": "node-old"}), lease=lease)
    metrics = f"http://127.0.0.1:{free_port()}"
    proc = _start(procs, tmp_path, etcd, prefix, "--hostname", "node-new",
                  "--metrics-address", metrics.removeprefix("http://"))
    statuses: list[int] = []
    deadline = time.monotonic() + 40
    while (published(c, _key(prefix)) or {}).get("host") != "node-new":
        assert time.monotonic() < deadline and proc.proc.poll() is None, proc.output()[-2000:]
        statuses.append(probe(metrics, "/health", timeout=2)[0])
        time.sleep(0.2)
    assert "waiting up to" in proc.output()
    assert 200 in statuses and 503 not in statuses, statuses


@pytest.mark.parametrize(("body", "key", "reason"), [
    ('address = "10.0.0.1\\n    server evil 10.6.6.6:80"', "address", "expected an IP address"),
    ('address = "10.0.0.1 backup"', "address", "expected an IP address"),
    ('id = "web 1"', "id", "expected an identifier"),
    ("weight = 1000", "weight", "from 0 to 256"),
    ('key = "/services/web/instances/a b"', "key", "expected an identifier"),
    ('[extra]\nnote = "a\\nserver x"', "extra.note", "printable"),
    ('[extra]\nstate = "drain"', "extra.state", "set by confsync register"),
    ('colour = "red"', "colour", "unknown key"),
])
def test_hostile_registration_values_are_refused_exit_2(
        etcd: EtcdMember, prefix: str, tmp_path: Path, body: str, key: str,
        reason: str) -> None:
    path = write_registration(tmp_path / "conf", "bad", f'service = "web"\nport = 8080\n{body}\n')
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           log=tmp_path / "bad.log")
    try:
        assert proc.wait() == 2
    finally:
        proc.stop()
    out = proc.output()
    assert f"{path}: {key}: " in out and reason in out, out
    assert list(client(etcd.endpoint).get_prefix(prefix)) == []


def test_exec_child_death_deregisters_at_once_and_passes_its_status(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    port = free_port()
    # (a drain set, which the child's death must skip)
    write_registration(tmp_path / "conf", "web", _registration(port, ttl="30s", drain="1s"))
    child = f"{sys.executable} -m http.server {port} --bind 127.0.0.1"
    proc = _start(procs, tmp_path, etcd, prefix, "--exec", child)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=20, what="registration")
    pid = int(proc.output().split("as pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: published(c, _key(prefix)) is None, timeout=5, interval=0.01,
             what="key gone")
    assert time.monotonic() - killed < 1.0, "at once, not after the 30 s ttl"
    assert proc.wait() == 128 + signal.SIGKILL
    assert "deregistering now" in proc.output() and "draining for" not in proc.output()


def test_exec_program_not_installed_yet_is_not_exit_2(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """A program not installed yet (a package still to come at boot) was exit 2, "fix the
    configuration", which the unit never restarts: the node never joined its pool. Now 127,
    as `watch --exec` and a shell say it; the unit starts it again."""
    port = free_port()
    write_registration(tmp_path / "conf", "web", _registration(port))
    missing = tmp_path / "not-yet" / "web"
    proc = _start(procs, tmp_path, etcd, prefix, "--exec", f"{missing} --port {port}")
    assert proc.wait() == 127, proc.output()[-2000:]
    assert f"cannot run `{missing}`: No such file or directory" in proc.output()
    assert list(client(etcd.endpoint).get_prefix(prefix)) == []


def test_exec_sigterm_drains_before_stopping_the_child(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    port = free_port()
    write_registration(tmp_path / "conf", "web", _registration(port, drain="1s"))
    child = f"{sys.executable} -m http.server {port} --bind 127.0.0.1"
    proc = _start(procs, tmp_path, etcd, prefix, "--exec", child)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=20, what="registration")
    proc.signal(signal.SIGTERM)
    wait_for(lambda: (published(c, _key(prefix)) or {}).get("state") == "drain", timeout=5,
             what="drain")
    # The child still serves while draining.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    status = proc.wait()
    assert published(c, _key(prefix)) is None
    assert status in (0, 128 + signal.SIGTERM)  # http.server dies of SIGTERM: 143
    log = proc.output()
    assert log.index("drain -> absent") < log.index("child exited with status")


def test_a_keepalive_that_keeps_failing_gets_a_new_lease_within_a_ttl(
        etcd: EtcdMember, prefix: str) -> None:
    """Keepalives alone fail (as they all did through a gRPC proxy) while every other call
    works: the lease lapses and the key goes with it. The registrar must not go on refreshing a
    lease that is gone: after one TTL without a keepalive it grants a new one and writes again."""
    from confsync.register.registrar import Registrar, RegistrarEvent
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))

    def keepalive_refused(lease_id: int) -> Any:
        raise ConnectionError("keepalive refused")

    def new_client() -> Any:
        c = store.new_client()
        c.refresh_lease = keepalive_refused
        return c

    events: list[RegistrarEvent] = []
    registrar = Registrar(new_client, "node-a", 2, events.append).start()
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    try:
        registrar.want(key, {"address": "127.0.0.1", "port": 80, "host": "node-a"})
        wait_for(lambda: published(c, key) is not None, 10, what="first registration")
        first = c.get(key)[1].lease_id
        wait_for(lambda: sum(e.kind == "lease_granted" for e in events) >= 2, 10,
                 what="a new lease once the first had lapsed")
        wait_for(lambda: published(c, key) is not None and c.get(key)[1].lease_id != first,
                 10, what="the key written again on the new lease")
    finally:
        registrar.close(timeout=5)
        store.close()


def test_a_check_that_never_passes_is_logged_and_explained_in_ready(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """The README's example with its self-test script missing: checks start down, so one that
    fails from the start never went up or down and the instance stayed unregistered without a
    word. Its first failure is a WARNING, and /ready's `why` names it (200: the registrar works;
    the service is what is unhealthy)."""
    from tests.support.http_probe import ready

    missing = tmp_path / "web-selftest"
    write_registration(tmp_path / "conf", "web", _registration(
        backend.port, checks=_http_check(rise=1)
        + f'[[check]]\ntype = "exec"\ncommand = ["{missing}"]\ninterval = "100ms"\n'))
    metrics = free_port()
    proc = _start(procs, tmp_path, etcd, prefix, "--metrics-address", f"127.0.0.1:{metrics}")
    wait_for(lambda: "check 1 down" in proc.output(), timeout=15, what="the failing check")
    line = next(x for x in proc.output().splitlines() if "check 1 down" in x)
    assert "WARNING" in line and str(missing) in line, line

    def why() -> str:
        return str(ready(metrics)[1].get("why", {}).get("web", ""))

    wait_for(lambda: why().startswith("check 1 down"), timeout=10, what=f"/ready {why()!r}")
    # 200 once the lease is granted (a loaded host may say why before that: "not registered:
    # no lease", true then); the failing check is never a reason for 503.
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10, what=f"/ready 200: {ready(metrics)}")
    assert why().startswith("check 1 down")
    assert published(client(etcd.endpoint), _key(prefix)) is None
    missing.write_text("#!/bin/sh\nexit 0\n")
    missing.chmod(0o755)
    wait_for(lambda: published(client(etcd.endpoint), _key(prefix)) is not None, timeout=15,
             what="registered once the check passes")
    wait_for(lambda: why().startswith("checks passing"), timeout=5, what=f"/ready {why()!r}")
    assert proc.output().count("check 1 down") == 1  # not a line per failed run


def test_a_value_wanted_while_no_lease_is_held_is_only_ever_written_on_a_lease(
        etcd: EtcdMember, prefix: str) -> None:
    """With nothing to publish the registrar holds no lease and asks etcd every ttl/3 whether
    it is there; a check that went up during that ask had its value put on no lease (then put
    again on a new lease). A registrar killed between the two leaves a "ready" that never goes
    (found as test_a_frozen_first_endpoint_never_lets_the_lease_lapse reading lease 0, under
    load). The want arrives here inside the ask itself, deterministically."""
    from confsync.register.registrar import Registrar
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    key = f"{prefix}/services/web/instances/web-1"
    asked = threading.Event()

    def new_client() -> Any:
        c = store.new_client()
        status = c.status

        def status_then_a_check_goes_up() -> Any:
            answer = status()
            if not asked.is_set():
                asked.set()
                registrar.want(key, {"address": "127.0.0.1", "port": 80, "host": "node-a"})
            return answer

        c.status = status_then_a_check_goes_up
        return c

    registrar = Registrar(new_client, "node-a", 30, lambda event: None)
    registrar.want(key, None)
    registrar.start()
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: asked.is_set() and registrar.flush(0.1), 10, what="registered")
        _raw, meta = c.get(key)
        assert meta.lease_id != 0
        assert meta.version == 1, "written once, on the lease (not first on none)"
    finally:
        registrar.close(timeout=5)
        store.close()


_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
           "--inh-caps=-dac_override,-dac_read_search"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns a directory to another user")
def test_a_maintenance_file_that_cannot_be_looked_up_keeps_the_last_state(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """The maintenance file's directory made unreadable to the registrar (the service's own
    0700 directory; the shipped unit runs it without CAP_DAC_OVERRIDE): stat's EACCES went out
    of the loop, the registrar died with a traceback at every start and the healthy instance
    fell out of the pool. Now its last known state is kept, with a WARNING and in /ready's
    `why`, until it can look."""
    from tests.support.http_probe import ready

    web = tmp_path / "web"
    web.mkdir()
    os.chown(web, 65534, 65534)
    write_registration(tmp_path / "conf", "web", _registration(
        backend.port, maintenance_file=str(web / "maint")))
    metrics = free_port()
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "r.log", wrapper=_NO_DAC)
    procs.append(proc)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None, timeout=15, what="registered")
    web.chmod(0o700)
    wait_for(lambda: "cannot tell whether" in proc.output() or proc.proc.poll() is not None,
             timeout=5, what="the maintenance file's lookup refused")
    assert proc.proc.poll() is None, proc.output()[-2000:]
    assert (published(c, _key(prefix)) or {}).get("state") == "ready"
    wait_for(lambda: "Permission denied" in str(ready(metrics)[1].get("why", {}).get("web")),
             timeout=5, what=f"/ready's why names it: {ready(metrics)}")
    (web / "maint").touch()
    web.chmod(0o755)
    wait_for(lambda: (published(c, _key(prefix)) or {}).get("state") == "maint", timeout=5,
             what="maint once the file can be seen")
    assert proc.output().count("cannot tell whether") == 1  # once, not a line per tick


def test_a_put_whose_answer_was_lost_is_not_kept_alive_once_unwanted(
        etcd: EtcdMember, prefix: str) -> None:
    """A put that etcd committed but whose answer never came (a timeout on a loaded machine, a
    connection cut after the commit) is not recorded as written; when the check went down
    before the retry, nothing was to delete as far as the registrar knew, and the read-back
    left a key on a lease alone (taken for an earlier run's): a "ready" that our own
    keepalives kept alive for as long as the check stayed down."""
    from confsync.register.registrar import Registrar
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    key = f"{prefix}/services/web/instances/web-1"
    other = f"{prefix}/services/web/instances/web-2"
    armed, lost = threading.Event(), threading.Event()

    def new_client() -> Any:
        c = store.new_client()
        transaction = c.transaction

        def answer_lost_once(*args: Any, **kwargs: Any) -> Any:
            answer = transaction(*args, **kwargs)
            if armed.is_set() and not lost.is_set():
                lost.set()
                registrar.want(key, None)  # the check goes down before the retry
                raise TimeoutError("the answer was lost")
            return answer

        c.transaction = answer_lost_once
        return c

    registrar = Registrar(new_client, "node-a", 3, lambda event: None)
    registrar.start()
    c = client(etcd.endpoint)
    try:
        # Another key first, so that a lease is held when the put is made.
        registrar.want(other, {"address": "127.0.0.1", "port": 81, "host": "node-a"})
        wait_for(lambda: registrar.flush(0.1), 10, what="a lease held")
        armed.set()
        registrar.want(key, {"address": "127.0.0.1", "port": 80, "host": "node-a"})
        wait_for(lambda: lost.is_set(), 10, what="the put")
        assert c.get(key)[1].lease_id == c.get(other)[1].lease_id, "committed, on the lease"
        # Read back after the next keepalive (ttl/3 = 1 s), with slack.
        wait_for(lambda: published(c, key) is None, 5, what="the stale key deleted")
    finally:
        registrar.close(timeout=5)
        store.close()


def test_a_conflict_whose_lease_lapses_while_it_is_read_is_no_conflict(
        etcd: EtcdMember, prefix: str) -> None:
    """At start, a key another host holds is read, then its lease's TTL. A lease that lapsed
    between the two (a replaced node's, just then) answered TTL 0, taken for a key on no lease:
    refused at once, exit 2, which the unit does not restart: the new node never registered."""
    from confsync.register.registrar import Registrar
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    lease = c.lease(30)
    c.put(key, json.dumps({"address": "127.0.0.1", "port": 80, "host": "node-b"}), lease=lease)

    def new_client() -> Any:
        new = store.new_client()
        lease_info = new.get_lease_info

        def lapsing_just_now(lease_id: int) -> Any:
            c.revoke_lease(lease_id)  # as when its TTL runs out between the two reads
            return lease_info(lease_id)

        new.get_lease_info = lapsing_just_now
        return new

    registrar = Registrar(new_client, "node-a", 3, lambda event: None)
    try:
        assert registrar.conflicts([key], wait_out_leases=True) == []
    finally:
        store.close()
    assert published(c, key) is None


def test_a_lease_etcd_still_holds_is_kept_after_a_ttl_without_keepalives(
        etcd: EtcdMember, prefix: str) -> None:
    """No keepalive got through for a whole TTL, but etcd kept the lease: a new leader extends
    every lease when it is elected, so a frozen leader's election (the registrar talking to
    it) leaves the lease alive though the registrar's own clock says it ran out. It was given
    up anyway and the key moved to a new lease (what failed
    test_a_frozen_first_endpoint_never_lets_the_lease_lapse now and then). A keepalive now asks
    first; a lease etcd no longer has, or one no keepalive reaches, is still replaced."""
    from confsync.register.registrar import Registrar, RegistrarEvent
    from confsync.settings import EtcdSettings
    from confsync.stores.etcd import EtcdStore

    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    frozen = threading.Event()
    renewed_after: list[int] = []  # keepalives answered after the thaw

    def new_client() -> Any:
        if frozen.is_set():
            raise ConnectionError("no answer (a frozen leader, then no leader)")
        new = store.new_client()
        refresh = new.refresh_lease

        def refresh_counted(lease_id: int) -> Any:
            answers = list(refresh(lease_id))
            renewed_after.append(lease_id)
            return iter(answers)

        new.refresh_lease = refresh_counted
        return new

    events: list[RegistrarEvent] = []
    registrar = Registrar(new_client, "node-a", 2, events.append).start()
    try:
        registrar.want(key, {"address": "127.0.0.1", "port": 80, "host": "node-a"})
        wait_for(lambda: published(c, key) is not None, 10, what="registered")
        lease = c.get(key)[1].lease_id
        frozen.set()
        registrar.reconnect()  # every call fails from now on
        # etcd keeps it alive meanwhile (as the new leader's extension does), past its TTL.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            list(c.refresh_lease(lease))
            time.sleep(0.3)
        wait_for(lambda: not registrar.connected, 5, what="the outage noticed")
        renewed_after.clear()
        frozen.clear()
        wait_for(lambda: renewed_after, 10, what="a keepalive answered after the thaw")
        assert c.get(key)[1].lease_id == lease
        assert sum(e.kind == "lease_granted" for e in events) == 1
    finally:
        registrar.close(timeout=5)
        store.close()


def test_a_sighup_while_starting_does_not_end_the_registrar(
        etcd: EtcdMember, prefix: str, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """SIGHUP's default action ends the process: one sent before the registrar's own handler
    (while it imported and set up) ended it with status 129, and the node never registered."""
    write_registration(tmp_path / "conf", "web", _registration(backend.port))
    proc = _start(procs, tmp_path, etcd, prefix)

    def grpc_loaded() -> bool:  # by the start-up preload: past entry(), before the loop
        with contextlib.suppress(OSError):
            return "cygrpc" in Path(f"/proc/{proc.proc.pid}/maps").read_text()
        return False

    wait_for(lambda: grpc_loaded() or proc.proc.poll() is not None, 30, what="gRPC loaded")
    proc.signal(signal.SIGHUP)
    c = client(etcd.endpoint)
    wait_for(lambda: published(c, _key(prefix)) is not None or proc.proc.poll() is not None,
             timeout=15, what="registration")
    assert proc.proc.poll() is None, f"exited with {proc.proc.returncode}:\n{proc.output()}"
    wait_for(lambda: "SIGHUP ignored" in proc.output(), 10, what="the held SIGHUP taken")


CLONE_REASON = "two hosts share a host name (a cloned image?); give each a distinct " \
    "--hostname or id"


def _clone(procs: list[RegisterProcess], tmp_path: Path, etcd: EtcdMember, prefix: str,
           name: str, address: str) -> tuple[RegisterProcess, int]:
    """A registrar for host "node-a" publishing `address` (so whose value is published can be
    told), with an exec check that fails while tmp_path/sick-`name` exists."""
    write_registration(tmp_path / name, "web", _registration(
        80, address=address, ttl="3s", drain="1s", checks=(
            f'[[check]]\ntype = "exec"\ncommand = ["test", "!", "-e", "{tmp_path}/sick-{name}"]'
            '\ninterval = "100ms"\nrise = 1\nfall = 1\n')))
    metrics = free_port()
    proc = RegisterProcess(tmp_path / name, etcd.endpoint, "--prefix", prefix, "--hostname",
                           "node-a", "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / f"{name}.log")
    procs.append(proc)
    return proc, metrics


def _published_address(c: Any, key: str) -> str | None:
    return (published(c, key) or {}).get("address")


def _two_clones(procs: list[RegisterProcess], tmp_path: Path, etcd: EtcdMember,
               prefix: str) -> tuple[Any, tuple[RegisterProcess, int],
                                     tuple[RegisterProcess, int]]:
    """Two registrars with the same host name and registration, the second started once the
    first has registered: it takes the key over at its start (as a restarted registrar must)."""
    c = client(etcd.endpoint)
    key = _key(prefix)
    first = _clone(procs, tmp_path, etcd, prefix, "a", "10.0.0.1")
    wait_for(lambda: _published_address(c, key) == "10.0.0.1", timeout=15,
             what="the first clone registered")
    second = _clone(procs, tmp_path, etcd, prefix, "b", "10.0.0.2")
    wait_for(lambda: _published_address(c, key) == "10.0.0.2", timeout=15,
             what="the second clone took the key over at its start")
    return c, first, second


def _sample(c: Any, key: str, seconds: float) -> list[str | None]:
    """The published address every 50 ms for `seconds`."""
    values = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        values.append(_published_address(c, key))
        time.sleep(0.05)
    return values


def test_two_hosts_sharing_a_host_name_publish_one_stable_value(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """A cloned VM image, or two containers given the same --hostname: both registrars took
    the key for theirs, found it "changed under us" at every keepalive (the other wrote it on
    its own lease) and wrote it back, so the published address flipped between the two every
    ttl/3 forever, while /ready said 200 on both."""
    from tests.support.http_probe import ready

    c, (first, first_metrics), (second, second_metrics) = _two_clones(procs, tmp_path, etcd,
                                                                      prefix)
    key = _key(prefix)
    # Sampled for five keepalive periods (ttl/3 = 1 s): the value flipped at every one.
    values = _sample(c, key, 5.0)
    changes = sum(a != b for a, b in itertools.pairwise(values))
    assert changes <= 1, (f"{changes} changes of the published value: {values}\n"
                          f"{first.output()[-2000:]}\n{second.output()[-2000:]}")
    assert values[-1] == "10.0.0.2", "the second (which took the key at its start) keeps it"
    # The first, finding it on another live lease, backs off and says why.
    wait_for(lambda: ready(first_metrics)[0] == 503, timeout=10,
             what=f"the first clone's /ready 503: {ready(first_metrics)}")
    assert ready(second_metrics)[0] == 200, ready(second_metrics)
    lease = c.get(key)[1].lease_id
    reasons = ready(first_metrics)[1]["reasons"]
    assert any(CLONE_REASON in r and f"{lease:x}" in r for r in reasons), reasons
    line = (f"ERROR register: another registrar with host name 'node-a' publishes {key} on "
            f"lease {lease:x}: {CLONE_REASON}")
    time.sleep(2.0)  # more retries (every ttl/3): said once
    assert first.output().count(line) == 1, first.output()[-3000:]
    # The winner stops (drains, deletes its key): the first registers within about a ttl.
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    stopped = time.monotonic()
    wait_for(lambda: _published_address(c, key) == "10.0.0.1", timeout=10, interval=0.05,
             what=f"the first clone registered again\n{first.output()[-2000:]}")
    assert time.monotonic() - stopped < 3 + 1, "within the ttl (3 s), with slack"
    assert c.get(key)[1].lease_id not in (0, lease)
    wait_for(lambda: ready(first_metrics)[0] == 200, timeout=5,
             what=f"/ready 200 again: {ready(first_metrics)}")
    assert f"{key} is ours again (was held by another registrar" in first.output()
    assert first.proc.poll() is None


def test_a_clone_whose_check_fails_never_deletes_the_others_key(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    """The losing clone's check goes down: its delete, guarded by this host name's value,
    took away the other clone's healthy key."""
    c, (first, _), (second, _) = _two_clones(procs, tmp_path, etcd, prefix)
    key = _key(prefix)
    # The first has found the key on the second's lease (at a read-back, within ttl/3) and
    # said so: waited for, not slept for.
    wait_for(lambda: "another registrar with host name 'node-a'" in first.output(), timeout=10,
             what=f"the first clone finding the key on another lease\n{first.output()[-2000:]}")
    (tmp_path / "sick-a").touch()
    wait_for(lambda: "check 0 down" in first.output(), timeout=10, what="the check down")
    values = _sample(c, key, 4.0)  # read-backs and retries: four keepalive periods
    assert None not in values, f"{values}\n{first.output()[-3000:]}"
    assert set(values) == {"10.0.0.2"}, f"{values}\n{first.output()[-3000:]}"
    # And its stop deletes nothing of the other's either.
    assert first.stop() == 0
    assert _published_address(c, key) == "10.0.0.2"
    assert second.proc.poll() is None
