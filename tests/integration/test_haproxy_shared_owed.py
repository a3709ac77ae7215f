"""A file of a shared HAProxy (`haproxy -f haproxy.cfg -f two.cfg`) whose reload is owed for
a reason other than a failed reload, while etcd lifts a maintenance it set on a server of the
other file.

two.cfg's reload is owed because a predecessor was killed between installing it and reloading
(its running copy says what HAProxy runs), or because its install is stuck on a frozen
filesystem (HAProxy runs the file that install was to replace). Either way what HAProxy runs
of it is known, but each pass of haproxy.cfg took it for unknown, and with it the whole
configuration: the server etcd put back in rotation was kept in maintenance as if an
operator's, for good (later passes found its line unchanged). Only what is truly unknown
counts as unknown now: etcd's change wins, and an operator's maintenance of a server etcd left
alone stays.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, LiveServer, live_servers
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess
from tests.support.disk import freeze, loop_ext4, thaw
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.haproxy_files import TWO, once_in
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


def _servers(stack: HAProxyStack, backend: str) -> dict[str, LiveServer]:
    return live_servers(AdminSocket(stack.admin))[backend]


@contextmanager
def _shared(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
            two_dir: Path) -> Iterator[HAProxyStack]:
    """haproxy.cfg (be_web: a, b) and two.cfg in `two_dir` (be_two: x) of one HAProxy,
    running; an operator has put be_web/b in maintenance."""
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    try:
        dest = two_dir / "two.cfg"
        write_resource(stack.confdir, "two", TWO.format(port=free_port(), options=""),
                       f'dest = "{dest}"\nkeys = ["/two"]\n[haproxy]\n'
                       f'master_socket = "{stack.master}"\nruntime_socket = "{stack.admin}"\n')
        stack.others = (dest,)
        stack.put_basics()
        stack.put_instance("web", "a", backends["a"].port)
        stack.put_instance("web", "b", backends["b"].port)
        stack.put("/two/servers/x", str(backends["c"].port))
        stack.sync_ok()
        stack.start()
        assert stack.admin_command("disable server be_web/b").strip() == ""
        yield stack
    finally:
        stack.stop()


def _watch(stack: HAProxyStack, tmp_path: Path) -> tuple[WatchProcess, int]:
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms",
                         "--metrics-address", f"127.0.0.1:{metrics}",
                         log=tmp_path / "watch.log")
    watch.wait_log("watching /", timeout=15)
    return watch, metrics


def _until(predicate: object, watch: WatchProcess, timeout: float = 5) -> None:
    try:
        wait_for(predicate, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"not met; log:\n{watch.output()[-3000:]}") from None


def _lift(stack: HAProxyStack, watch: WatchProcess, backends: dict[str, HTTPBackend]) -> None:
    """etcd lifts the maintenance it set on be_web/a: a serves, b stays the operator's."""
    stack.put_instance("web", "a", backends["a"].port)
    _until(lambda: not _servers(stack, "be_web")["a"].maint, watch)
    assert _servers(stack, "be_web")["b"].maint
    assert spread(stack.port, 2) == {"a": 2}


def test_a_sibling_owed_from_a_killed_predecessor_does_not_hide_etcds_lift(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    with _shared(haproxy_binary, etcd, backends, tmp_path) as stack:
        two = tmp_path / "two.cfg"
        stack.put_instance("web", "a", backends["a"].port, state="maint")
        stack.sync_ok()  # etcd's maintenance, set at runtime
        assert _servers(stack, "be_web")["a"].maint
        # A predecessor installed two.cfg with be_two/y and was killed before its reload.
        os.link(two, tmp_path / ".two.cfg.confsync-running")
        stack.put("/two/servers/y", str(backends["a"].port))
        alone = tmp_path / "alone"
        (alone / "conf.d").mkdir(parents=True)
        shutil.copytree(stack.confdir / "templates", alone / "templates")
        (alone / "conf.d" / "two.toml").write_text(
            (stack.confdir / "conf.d" / "two.toml").read_text().split("[haproxy]")[0])
        once_in(alone, stack)
        assert "server y " in two.read_text() and set(_servers(stack, "be_two")) == {"x"}
        stack.put("/two/servers/z", "not a port")  # two's render fails: its reload stays owed
        watch, _ = _watch(stack, tmp_path)
        try:
            watch.wait_log("still owed", timeout=5)
            _lift(stack, watch, backends)
            stack.delete("/two/servers/z")  # two's owed reload is done
            _until(lambda: not (tmp_path / ".two.cfg.confsync-running").exists(), watch)
            assert set(_servers(stack, "be_two")) == {"x", "y"}
            assert _servers(stack, "be_web")["b"].maint and not _servers(stack, "be_web")["a"].maint
            assert "Traceback" not in watch.output()
        finally:
            watch.stop()


def test_a_sibling_stuck_on_a_frozen_filesystem_does_not_hide_etcds_lift(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    with loop_ext4(tmp_path / "fs") as fs, _shared(haproxy_binary, etcd, backends, fs) as stack:
        watch, metrics = _watch(stack, tmp_path)
        try:
            _until(lambda: ready(metrics)[0] == 200, watch, timeout=10)
            stack.put_instance("web", "a", backends["a"].port, state="maint")
            _until(lambda: _servers(stack, "be_web")["a"].maint, watch)
            freeze(fs)
            try:
                stack.put("/two/servers/y", str(backends["a"].port))
                watch.wait_log("resource two: stage failed: stuck on I/O", timeout=10)
                _lift(stack, watch, backends)
            finally:
                thaw(fs)
            _until(lambda: set(_servers(stack, "be_two")) == {"x", "y"}, watch, timeout=10)
            _until(lambda: ready(metrics)[0] == 200, watch)
            assert _servers(stack, "be_web")["b"].maint and not _servers(stack, "be_web")["a"].maint
            assert "Traceback" not in watch.output()
        finally:
            watch.stop()
