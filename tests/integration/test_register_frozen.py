"""`confsync register` itself stopped (SIGSTOP: a VM paused for live migration, a debugger,
a stuck host) and resumed, against a real etcd.

The monotonic clock runs on while a process is stopped, so on SIGCONT everything timed looks
late at once: the lease (rightly: it may have expired) and the checks' silence (wrongly: the
probes were stopped with the rest).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]


def _start(tmp_path: Path, etcd: EtcdMember, prefix: str, port: int, ttl: str,
           fall: int) -> RegisterProcess:
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {port}\nid = "web-1"\nttl = "{ttl}"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n'
                       f'[[check]]\ntype = "tcp"\ninterval = "200ms"\ntimeout = "200ms"\n'
                       f'rise = 1\nfall = {fall}\n')
    return RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           log=tmp_path / "register.log")


def _frozen(proc: RegisterProcess, seconds: float) -> float:
    """Stop the whole process for `seconds`; the monotonic time it was resumed."""
    os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)
    return time.monotonic()


def test_a_stop_shorter_than_the_lease_keeps_a_healthy_instance_registered(
        etcd: EtcdMember, backend: HTTPBackend, tmp_path: Path) -> None:
    """Stopped for longer than interval + timeout + 1 s (the stuck-probe limit) but well within
    the lease: on SIGCONT the key stays as it was. Before, the loop woke first and reported the
    check stuck ("no result for 2.5s"), and with fall = 1 the key was deleted and written
    again: a flap out of every consumer's pool."""
    prefix = f"/rf{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    proc = _start(tmp_path, etcd, prefix, backend.port, ttl="10s", fall=1)
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registered")
        _, meta = c.get(key)
        created = int(meta.create_revision)
        for _ in range(3):  # which thread runs first after SIGCONT is a race: try it thrice
            _frozen(proc, 2.5)
            time.sleep(0.7)  # several check intervals after the resume
            _, meta = c.get(key)
            assert meta is not None and int(meta.create_revision) == created, proc.output()
        out = proc.output()
        assert "no result for" not in out and "-> absent" not in out, out
        assert "did not run for" in out  # the stop is reported, as a stop
        value = published(c, key)
        assert value is not None and value["state"] == "ready"
    finally:
        proc.stop()
        c.close()


def test_a_stop_longer_than_the_lease_registers_again_at_once(
        etcd: EtcdMember, backend: HTTPBackend, tmp_path: Path) -> None:
    """The lease expired while stopped and its key went with it: on SIGCONT a new lease is
    granted and the key written at once (measured 12-16 ms), not after a failed keepalive."""
    prefix = f"/rf{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    proc = _start(tmp_path, etcd, prefix, backend.port, ttl="2s", fall=3)
    c = client(etcd.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None, timeout=15, what="registered")
        _, meta = c.get(key)
        lease = int(meta.lease_id)
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: published(c, key) is None, timeout=6, what="the lease lapsed")
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: published(c, key) is not None, timeout=3, interval=0.005,
                 what="registered again")
        print(f"SIGCONT -> key back: {time.monotonic() - resumed:.3f} s")
        assert time.monotonic() - resumed < 1.0
        _, meta = c.get(key)
        assert int(meta.lease_id) not in (0, lease)
        time.sleep(2.5)  # more than the TTL: the new lease is kept alive
        assert published(c, key) is not None
        assert "Traceback" not in proc.output()
    finally:
        proc.stop()
        c.close()


def test_a_start_that_waited_for_etcd_is_not_taken_for_a_stop(tmp_path: Path) -> None:
    """The start reads the keys (refuse_conflicts) before the loop runs; with etcd not
    answering that takes etcd's timeout, and the loop's first tick took the gap for a stop of
    the whole process: a WARNING "did not run for 1.5s (stopped: SIGSTOP, a paused VM?)" at
    every start while etcd was away, and the checks' silence excused for nothing."""
    with socket.socket() as silent:  # accepts (the kernel does) but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        write_registration(tmp_path / "conf", "web",
                           'service = "web"\nport = 1\nid = "web-1"\naddress = "127.0.0.1"\n'
                           '[[check]]\ntype = "tcp"\ninterval = "200ms"\n')
        proc = RegisterProcess(tmp_path / "conf", endpoint, log=tmp_path / "register.log",
                               env={"CONFSYNC_ETCD_TIMEOUT": "1500ms"})
        try:
            wait_for(lambda: "registration(s) for host" in proc.output(), timeout=15,
                     what="the loop started")
            time.sleep(0.5)  # several ticks
            out = proc.output()
            assert "etcd unreachable at start" in out, out
            assert "did not run for" not in out, out
        finally:
            proc.stop()


def test_ready_is_not_200_while_a_lease_the_stop_outlived_is_not_renewed(
        etcd_private: EtcdMember, backend: HTTPBackend, tmp_path: Path) -> None:
    """Stopped past the lease's TTL, with etcd away when it runs again: its keys are gone,
    and /ready said 200 ("web": "ready") until a keepalive and a new grant had both failed,
    up to twice etcd's timeout. It is 503 from the first request after SIGCONT now (compared
    with the lease's TTL at the request), and 200 again once the key is back."""
    prefix = f"/rf{uuid.uuid4().hex[:10]}"
    key = f"{prefix}/services/web/instances/web-1"
    port = free_port()
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {backend.port}\nid = "web-1"\nttl = "3s"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n[[check]]\ntype = "tcp"\n'
                       'interval = "200ms"\nrise = 1\n')
    proc = RegisterProcess(tmp_path / "conf", etcd_private.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{port}",
                           log=tmp_path / "register.log")
    c = client(etcd_private.endpoint)
    try:
        wait_for(lambda: published(c, key) is not None and ready(port)[0] == 200, timeout=15,
                 what="registered and ready")
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: published(c, key) is None, timeout=8, what="the lease lapsed")
            etcd_private.freeze()
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        answers = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            answers.append(ready(port))
            time.sleep(0.05)
        assert all(status == 503 for status, _ in answers), answers
        assert "not registered" in " ".join(answers[0][1]["reasons"]), answers[0]
        etcd_private.thaw()
        wait_for(lambda: published(c, key) is not None and ready(port)[0] == 200, timeout=10,
                 what="registered again, and ready")
    finally:
        etcd_private.thaw()
        proc.stop()
        c.close()
