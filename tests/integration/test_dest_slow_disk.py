"""A dest on a slow but healthy disk (its fsync waits ~4 s behind `dd`s hammering it: a real
loop-mounted ext4 with a real blkio throttle, and real etcd) is slow, not stuck: no `stuck on
I/O`, /ready stays 200, and resources sharing a reload still reload once. Skipped without
root or cgroup v1 blkio."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from confsync.dest_io import DestIo, IoStuck, Progress
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.disk import hammered, loop_ext4
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe


@pytest.fixture
def slow_fs(tmp_path: Path) -> Iterator[Path]:
    with loop_ext4(tmp_path / "fs", size_mb=64) as path:
        yield path


def test_a_dest_on_a_slow_disk_is_slow_not_stuck(
        watchers: list[WatchProcess], slow_fs: Path, etcd: EtcdMember, tmp_path: Path,
        prefix: str) -> None:
    """Each write takes longer than the 3 s a dest's file step may take. The disk completes
    writes all along, so confsync waits for it: it used to give up at 3 s (the neighbour at
    0.2 s), log `stuck on I/O ... frozen ... ?` for each, answer /ready 503 for seconds, and
    reload once per late return instead of once for the txn."""
    c = client(etcd.endpoint)
    served = tmp_path / "served"
    for name in "ab":
        c.put(f"{prefix}/{name}/v", "1")
        write_resource(tmp_path / "cd", name, f"{name}={{{{ getv('/{name}/v') }}}}\n",
                       f'dest = "{slow_fs}/{name}.conf"\nkeys = ["/{name}"]\n'
                       f'reload_cmd = ["sh", "-c", "echo r >> {served}"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: probe(base, "/ready")[0] == 200, 20, what="the first render")
    reloads = read(served).count("r")
    with hammered(slow_fs) as group:
        (group / "cgroup.procs").write_text(str(w.proc.pid))
        began = time.monotonic()
        c.transaction(compare=[], success=[c.transactions.put(f"{prefix}/{n}/v", "2")
                                           for n in "ab"], failure=[])
        not_ready = []
        while time.monotonic() - began < 25:
            code, body = probe(base, "/ready")
            if code != 200:
                not_ready.append(body.get("reasons"))
            if read(served).count("r") > reloads and all(
                    read(slow_fs / f"{n}.conf") == f"{n}=2\n" for n in "ab"):
                break
            time.sleep(0.05)
        took = time.monotonic() - began
    time.sleep(0.5)  # (a late second reload would come now)
    assert all(read(slow_fs / f"{n}.conf") == f"{n}=2\n" for n in "ab"), w.output()[-3000:]
    assert took > 3.5, f"the disk was not slow ({took:.1f}s): the test proves nothing"
    assert "stuck on I/O" not in w.output(), w.output()[-3000:]
    assert not not_ready, not_ready[:3]
    assert read(served).count("r") == reloads + 1, w.output()[-3000:]
    assert w.proc.poll() is None


def _writes_for(seconds: float, where: Path) -> Callable[[Progress], float]:
    """A file step that keeps its disk writing (write, fsync) for `seconds`: slow, not stuck."""
    def step(_: Progress) -> float:
        began = time.monotonic()
        with (where / "busy").open("wb") as fh:
            while time.monotonic() - began < seconds:
                fh.write(b"x" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        return time.monotonic() - began
    return step


def test_slow_disks_hold_the_loop_only_so_long_in_all(slow_fs: Path) -> None:
    """A call whose disk completes writes is waited for past its patience; but the waiting
    has a budget over all calls (SLOW_LIMIT per SLOW_WINDOW): ten dests on a disk whose fsync
    takes 10 s must not hold the loop, and every other resource, 100 s. Past the budget a call
    is stuck at its patience as on a frozen filesystem."""
    returned: list[Path] = []
    io = DestIo(patience=0.3, slow_limit=1.5, on_return=returned.append)
    assert io.call("a", slow_fs / "a.conf", "stage", _writes_for(1.0, slow_fs)) >= 1.0
    began = time.monotonic()
    with pytest.raises(IoStuck):
        io.call("b", slow_fs / "b.conf", "stage", _writes_for(2.0, slow_fs))
    assert time.monotonic() - began < 1.0  # its patience: the budget was spent on a
    wait_for(lambda: returned, 5, what="the stuck call's return")  # (before the unmount)
