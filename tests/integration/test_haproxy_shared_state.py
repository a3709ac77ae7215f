"""The state of every server of an HAProxy that loads several files confsync writes
(`haproxy -f haproxy.cfg -f two.cfg`), across passes that change more than one file and
across a start's repair.

A pass that changed both files reloaded once with neither previous file known: the saved
server state kept the first file's servers only where they agreed with the file (an
operator's maintenance was lost) and dropped every line of the second file (its servers known
DOWN took traffic again, its operator's maintenance too); a pool change in both files, which
the runtime API can make, was a reload. A repair at a start (a file changed while confsync was
down) lost the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.cli import write_resource
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.haproxy_files import TWO, once_in, watching
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

DEAD = " dead 127.0.0.1 0 "  # srv_name srv_addr srv_op_state=STOPPED (known DOWN)


def _shared(stack: HAProxyStack, backends: dict[str, HTTPBackend], two_port: int) -> None:
    """be_web (a, b) in haproxy.cfg and be_two (x, y, a dead one) in two.cfg, both resources
    of one HAProxy, running; an operator has put be_web/a and be_two/x in maintenance."""
    dest = stack.base / "two.cfg"
    write_resource(stack.confdir, "two",
                   TWO.format(port=two_port, options=" weight 10 check inter 100ms fall 2"),
                   f'dest = "{dest}"\nkeys = ["/two"]\n[haproxy]\n'
                   f'reload_strategy = "{stack.strategy}"\n'
                   f'master_socket = "{stack.master}"\nruntime_socket = "{stack.admin}"\n')
    stack.others = (dest,)
    stack.put_basics(check_interval="100ms")
    stack.put_instance("web", "a", backends["a"].port)
    stack.put_instance("web", "b", backends["b"].port)
    stack.put("/two/servers/x", str(backends["b"].port))
    stack.put("/two/servers/y", str(backends["c"].port))
    stack.put("/two/servers/dead", str(free_port()))
    stack.sync_ok()
    stack.start()
    for server in ("be_web/a", "be_two/x"):
        assert stack.admin_command(f"disable server {server}").strip() == ""
    wait_for(lambda: DEAD in stack.admin_command("show servers state be_two"), timeout=5)


def _kept(stack: HAProxyStack) -> dict[str, bool]:
    """backend/server -> in maintenance, for the servers whose state must be kept."""
    live = live_servers(AdminSocket(stack.admin))
    return {ref: live[ref.split("/")[0]][ref.split("/")[1]].maint
            for ref in ("be_web/a", "be_two/x", "be_two/y")}


def _structural(stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    stack.put("/services/api/config", {"path_prefix": "/api", "check_path": "/"})
    stack.put_instance("api", "d", backends["c"].port)


@pytest.mark.parametrize("strategy", ["runtime", "reload"])
def test_a_pass_that_changes_both_files_keeps_every_servers_state(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        strategy: str) -> None:
    two_port = free_port()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=strategy)
    try:
        _shared(stack, backends, two_port)
        reloads = stack.status().reloads
        # Pool changes in both files in one pass: the runtime API, no reload.
        stack.put_instance("web", "c", backends["c"].port)
        stack.put("/two/servers/z", str(backends["a"].port))
        out = stack.sync_ok()
        assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
        runtime = strategy == "runtime"
        assert out.count("runtime API" if runtime else "reloaded HAProxy") == 2, out
        assert stack.status().reloads == reloads + (not runtime)
        reloads = stack.status().reloads
        # A structural change in one file and a pool change in the other: one reload.
        _structural(stack, backends)
        stack.put("/two/servers/w", str(backends["b"].port))
        out = stack.sync_ok()
        assert out.count("reloaded HAProxy") == 2, out
        assert stack.status().reloads == reloads + 1
        assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
        assert DEAD in stack.admin_command("show servers state be_two")  # still known DOWN
        assert set(spread(stack.port, 6)) == {"b", "c"}
        assert set(spread(two_port, 9)) == {"a", "b", "c"}  # y, z, w; not x, not dead
        assert spread(stack.port, 2, path="/api/x") == {"c": 2}
    finally:
        stack.stop()


def test_a_repair_at_start_keeps_an_operators_maintenance_and_the_other_files_state(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    two_port = free_port()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    try:
        _shared(stack, backends, two_port)
        reloads = stack.status().reloads
        # confsync is down; a structural change is written by a pass with no reload step.
        time.sleep(0.05)
        _structural(stack, backends)
        elsewhere = tmp_path / "confdir"
        (elsewhere / "conf.d").mkdir(parents=True)
        resource = (stack.confdir / "conf.d" / "haproxy.toml").read_text()
        (elsewhere / "conf.d" / "haproxy.toml").write_text(resource.split("[haproxy]")[0])
        once_in(elsewhere, stack)
        assert "be_api" in stack.cfg.read_text()

        with watching(stack, tmp_path) as watch:
            wait_for(lambda: spread(stack.port, 2, path="/api/x") == {"c": 2}, timeout=5)
            output = watch.output()
            assert "making the file live" in output and "Traceback" not in output, output
            assert stack.status().reloads == reloads + 1
            assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
            assert DEAD in stack.admin_command("show servers state be_two")
            assert spread(stack.port, 4) == {"b": 4}
            assert spread(two_port, 4) == {"c": 4}
    finally:
        stack.stop()


def test_a_runtime_pass_on_the_second_file_is_saved_for_the_next_reload(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend]) -> None:
    """The state file is named in the first file's `global`: a pass of the second resource
    alone saved nothing, and the next reload (anyone's: `systemctl reload`) loaded the state
    saved before it: a server's old port, and an operator's maintenance lost."""
    two_port = free_port()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    try:
        _shared(stack, backends, two_port)
        stack.put_instance("web", "c", backends["c"].port)  # a pass of the first file saves
        assert "runtime API" in stack.sync_ok()
        assert stack.admin_command("disable server be_web/c").strip() == ""
        # z joins, and serves while y moves from c to a (x is in maintenance, dead is DOWN:
        # with no other server serving, a move is a reload)
        stack.put("/two/servers/z", str(backends["a"].port))
        assert "runtime API" in stack.sync_ok()
        stack.put("/two/servers/y", str(backends["a"].port))
        assert "runtime API" in stack.sync_ok()
        wait_for(lambda: spread(two_port, 4) == {"a": 4}, timeout=10)
        wait_for(lambda: live_servers(AdminSocket(stack.admin))["be_two"]["y"].up, timeout=10)
        stack.reload_by_signal()
        assert spread(two_port, 4) == {"a": 4}
        assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
        assert spread(stack.port, 2) == {"b": 2}  # not c either
    finally:
        stack.stop()


def test_txns_over_both_files_keep_every_servers_state_under_watch(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """The same as `once` above through the daemon. (etcd answers each watch of a txn on its
    own: the loop may apply the two files in one pass or, under load, in two; either keeps
    every server's state.)"""
    two_port = free_port()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    try:
        _shared(stack, backends, two_port)
        with watching(stack, tmp_path) as watch:
            reloads = stack.status().reloads
            c = stack.client
            c.transaction(compare=[], failure=[], success=[
                c.transactions.put(f"{stack.prefix}/services/web/instances/c",
                                   f'{{"address": "127.0.0.1", "port": {backends["c"].port}}}'),
                c.transactions.put(f"{stack.prefix}/two/servers/z", str(backends["a"].port))])
            wait_for(lambda: {"c", "z"} <= set(live_servers(AdminSocket(stack.admin))["be_web"])
                     | set(live_servers(AdminSocket(stack.admin))["be_two"]), timeout=5)
            assert stack.status().reloads == reloads, watch.output()
            assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
            c.transaction(compare=[], failure=[], success=[
                c.transactions.put(f"{stack.prefix}/services/api/config",
                                   '{"path_prefix": "/api", "check_path": "/"}'),
                c.transactions.put(f"{stack.prefix}/services/api/instances/d",
                                   f'{{"address": "127.0.0.1", "port": {backends["c"].port}}}'),
                c.transactions.put(f"{stack.prefix}/two/servers/w", str(backends["b"].port))])
            wait_for(lambda: "w" in live_servers(AdminSocket(stack.admin))["be_two"]
                     and stack.status().reloads == reloads + 1, timeout=5)
            assert _kept(stack) == {"be_web/a": True, "be_two/x": True, "be_two/y": False}
            assert DEAD in stack.admin_command("show servers state be_two")
            assert set(spread(two_port, 9)) == {"a", "b", "c"}
            assert "Traceback" not in watch.output()
    finally:
        stack.stop()
