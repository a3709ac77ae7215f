"""A dest on a frozen filesystem (`fsfreeze -f`, as LVM and cloud snapshots do) under `confsync
watch`, with a real loop-mounted ext4 and real etcd: the blocked write holds that resource
only, /health stays 200, /ready names it, and it converges once thawed. Skipped without root."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.disk import freeze, loop_ext4, thaw
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

TEMPLATE = "value={{ getv('/k/v') }}\n"
STUCK = "stuck on I/O (filesystem frozen or hung?): app"


@pytest.fixture
def frozen_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 of the test's own; thawed and unmounted after (before `watchers` stops)."""
    with loop_ext4(tmp_path / "fs") as path:
        yield path


def _metric(base: str, line: str) -> bool:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        return line in response.read().decode()


def _watch(tmp_path: Path, etcd: EtcdMember, prefix: str,
           watchers: list[WatchProcess]) -> tuple[WatchProcess, str]:
    """`watch` of the confdir at tmp_path/cd with a metrics port; (it, the metrics URL)."""
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    watchers.append(w)
    return w, f"http://127.0.0.1:{port}"


def test_a_frozen_dest_holds_its_resource_alone_and_converges_at_thaw(
        watchers: list[WatchProcess], frozen_fs: Path, etcd: EtcdMember, tmp_path: Path,
        prefix: str) -> None:
    """Frozen: the other resource follows every change, /health 200, /ready 503 naming the
    stuck one, its dest untouched and one call blocked on it (no second apply, one error
    line). Thawed: the write that was blocked lands and is reloaded (nothing else would: the
    file then matches the data), nothing staged is left."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    c.put(prefix + "/o/v", "1")
    dest, other, served = frozen_fs / "out.conf", tmp_path / "other.conf", tmp_path / "served"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\ncheck_cmd = "test -s {{{{src}}}}"\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {served}"]\n')
    write_resource(tmp_path / "cd", "other", "other={{ getv('/o/v') }}\n",
                   f'dest = "{other}"\nkeys = ["/o"]\n')
    w, base = _watch(tmp_path, etcd, prefix, watchers)
    wait_for(lambda: read(dest) == "value=1\n" and read(other) == "other=1\n"
             and probe(base, "/ready")[0] == 200, 20, what="first render")
    freeze(frozen_fs)
    try:
        c.put(prefix + "/k/v", "2")
        c.put(prefix + "/o/v", "2")
        wait_for(lambda: read(other) == "other=2\n", 8,
                 what=f"the other resource while app's dest is frozen\n{w.output()[-2000:]}")
        wait_for(lambda: STUCK in probe(base, "/ready")[1].get("reasons", []), 5,
                 what=f"/ready naming the stuck resource: {probe(base, '/ready')}")
        assert probe(base, "/health")[0] == 200
        assert _metric(base, 'confsync_dest_io_stuck{resource="app"} 1.0')
        c.put(prefix + "/o/v", "3")  # the loop goes on; app waits for its blocked call
        wait_for(lambda: read(other) == "other=3\n", 5, what="a second change, still frozen")
        w.wait_log("resource app: stage failed: stuck on I/O", timeout=5)
        assert read(dest) == "value=1\n"
        assert probe(base, "/health")[0] == 200 and probe(base, "/ready")[0] == 503
    finally:
        thaw(frozen_fs)
    wait_for(lambda: read(served).splitlines()[-1:] == ["value=2"]
             and probe(base, "/ready")[0] == 200, 10,
             what=f"app's late write reloaded after thaw\n{w.output()[-2000:]}")
    assert read(dest) == "value=2\n"
    assert w.output().count("stuck on I/O") == 1, w.output()  # one call, never a second
    assert "returned after" in w.output()
    assert _metric(base, 'confsync_dest_io_stuck{resource="app"} 0.0')
    assert sorted(p.name for p in frozen_fs.iterdir()) == ["lost+found", "out.conf"]
    assert w.proc.poll() is None


def _dead_pid() -> int:
    """The pid of a process that has exited (a writer killed mid-write, long gone)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _stale_beside_dest(c: Any, frozen_fs: Path, tmp_path: Path,
                       prefix: str) -> tuple[Path, Path, Path]:
    """Resources `app` (dest on `frozen_fs`, its file current, with a killed writer's staged
    file beside it) and `other` (dest in tmp_path); (dest, other's dest, the staged file)."""
    c.put(prefix + "/k/v", "1")
    c.put(prefix + "/o/v", "1")
    dest, other = frozen_fs / "out.conf", tmp_path / "other.conf"
    dest.write_text("value=1\n")
    stale = frozen_fs / f".out.conf.{_dead_pid()}.0.confsync"
    stale.write_text("half")
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    write_resource(tmp_path / "cd", "other", "other={{ getv('/o/v') }}\n",
                   f'dest = "{other}"\nkeys = ["/o"]\n')
    return dest, other, stale


def test_a_stale_staged_file_on_a_frozen_fs_at_start_holds_its_resource_alone(
        watchers: list[WatchProcess], frozen_fs: Path, etcd: EtcdMember, tmp_path: Path,
        prefix: str) -> None:
    """A run killed mid-write left a staged file beside dest; the filesystem is frozen when
    `watch` starts (a snapshot, or a hung mount). Removing that file blocks: it used to run on
    the loop's thread, so nothing rendered and /health went 503 for as long as it was frozen.
    Now it is the dest's file work like any other: the other resource renders, and the stale
    file goes at thaw."""
    c = client(etcd.endpoint)
    dest, other, stale = _stale_beside_dest(c, frozen_fs, tmp_path, prefix)
    freeze(frozen_fs)
    try:
        w, base = _watch(tmp_path, etcd, prefix, watchers)
        wait_for(lambda: read(other) == "other=1\n", 10,
                 what=f"the other resource while a stale file waits\n{w.output()[-2000:]}")
        c.put(prefix + "/o/v", "2")
        wait_for(lambda: read(other) == "other=2\n", 5, what="a change, still frozen")
        assert probe(base, "/health")[0] == 200
        assert stale.exists()
    finally:
        thaw(frozen_fs)
    wait_for(lambda: not stale.exists() and probe(base, "/ready")[0] == 200, 10,
             what=f"the stale file removed at thaw\n{w.output()[-2000:]}")
    assert read(dest) == "value=1\n"
    assert w.proc.poll() is None


def test_a_staged_file_left_for_later_does_not_hold_the_loop_once_frozen(
        watchers: list[WatchProcess], frozen_fs: Path, etcd: EtcdMember, tmp_path: Path,
        prefix: str) -> None:
    """A stale staged file found on a read-only filesystem is removed later, by a try at each
    heartbeat. Made writable and frozen right away (a snapshot), that try blocks: it ran on
    the loop's thread, and held every resource until thaw. Now it waits on a worker."""
    c = client(etcd.endpoint)
    _, other, stale = _stale_beside_dest(c, frozen_fs, tmp_path, prefix)
    subprocess.run(["mount", "-o", "remount,ro", str(frozen_fs)], check=True, timeout=10)
    w, base = _watch(tmp_path, etcd, prefix, watchers)
    w.wait_log("removing it later", timeout=10)
    wait_for(lambda: read(other) == "other=1\n", 5, what="the first render")
    try:
        subprocess.run(f"mount -o remount,rw {frozen_fs} && fsfreeze -f {frozen_fs}",
                       shell=True, check=True, timeout=10)
        c.put(prefix + "/o/v", "2")
        wait_for(lambda: read(other) == "other=2\n", 5,
                 what=f"a change while the leftover's removal blocks\n{w.output()[-2000:]}")
        assert probe(base, "/health")[0] == 200
    finally:
        thaw(frozen_fs)
    wait_for(lambda: not stale.exists(), 5, what="the leftover removed at thaw")
    assert w.proc.poll() is None
