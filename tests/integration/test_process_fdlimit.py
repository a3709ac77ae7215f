"""A low soft open-file limit (64, as containers and old init scripts give) under a higher hard
one: the daemons raise it at start, so many checks never run out of descriptors; their
children get the limit confsync was started with."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.support import etcd_client
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_server import EtcdMember
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, write_registration


def rlimit_wrapper(soft: int, hard: int) -> list[str]:
    """A command prefix that runs the rest with RLIMIT_NOFILE (soft, hard)."""
    return [sys.executable, "-c",
            "import os, resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n"]


def _soft_limit(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if x.startswith("Max open files"))
    return int(line.split()[3])


@pytest.mark.etcd
def test_register_raises_a_low_open_file_limit_and_its_checks_stay_up(
        etcd: EtcdMember, backend: HTTPBackend, tmp_path: Path,
        procs: list[RegisterProcess]) -> None:
    """40 registrations, each a tcp and an exec check every 200 ms: under a soft limit of 64
    their probes failed with "Too many open files" (instances flapped out of the pool, and the
    etcd connection failed with them), while the hard limit allowed 4096."""
    prefix = f"/fd-{time.monotonic_ns()}"
    count = 40
    for i in range(count):
        write_registration(tmp_path / "conf", f"r{i}", "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in {
                "service": "web", "id": f"web-{i}", "port": backend.port,
                "address": "127.0.0.1", "ttl": "5s", "drain": "0s"}.items())
            + '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\nfall = 1\n'
            + '[[check]]\ntype = "exec"\ncommand = ["true"]\ninterval = "200ms"\nrise = 1\n'
              'fall = 1\n')
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           log=tmp_path / "register.log", wrapper=rlimit_wrapper(64, 4096))
    procs.append(proc)
    client = etcd_client.client(etcd.endpoint)
    wait_for(lambda: "registration(s) for host" in proc.output(),
             timeout=20, what=f"the start; log:\n{proc.output()[-2000:]}")
    assert _soft_limit(proc.proc.pid) == 4096  # was 64
    wait_for(lambda: len(list(client.get_prefix(f"{prefix}/services/web/instances/"))) == count,
             timeout=20, what=f"{count} registrations; log:\n{proc.output()[-2000:]}")
    time.sleep(1.5)  # some 7 rounds of every check
    assert "Too many open files" not in proc.output()
    assert "open-file limit raised from 64 to its hard limit, 4096" in proc.output()


def test_children_get_the_open_file_limit_confsync_was_started_with(tmp_path: Path) -> None:
    """`watch --exec` under 64:4096 raises its own limit; the exec child inherited 4096
    (under systemd's 1024:524288, 524288: services that select() past FD_SETSIZE or close
    every descriptor up to the soft limit broke or crawled)."""
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "a.tmpl").write_text("a {{ getv('/a') }}\n")
    check_limit, child_limit = tmp_path / "check.limit", tmp_path / "child.limit"
    (confdir / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path / "a.conf"}"\nkeys = ["/a"]\n'
        f'check_cmd = ["sh", "-c", "ulimit -Sn > {check_limit}"]\n')
    data = tmp_path / "data.yaml"
    data.write_text("a: 1\n")
    w = WatchProcess("--confdir", str(confdir), "--backend", "file", "--file", str(data),
                     "--exec", f"sh -c 'ulimit -Sn > {child_limit}; exec sleep 30'",
                     log=tmp_path / "watch.log", wrapper=rlimit_wrapper(64, 4096))
    try:
        wait_for(lambda: read(child_limit).strip() and read(check_limit).strip(), timeout=10,
                 what=f"both limits; log:\n{w.output()[-2000:]}")
        assert _soft_limit(w.proc.pid) == 4096  # confsync's own, raised
        # The service gets the limit confsync was started with; a check inherits the raised
        # one (a fork holding the GIL for each would cost a registrar with many exec checks
        # its etcd calls).
        assert (read(check_limit).strip(), read(child_limit).strip()) == ("4096", "64")
    finally:
        w.stop()
