"""A file of a shared HAProxy (`haproxy -f haproxy.cfg -f two.cfg`) whose reload failed and
was rolled back is, to the passes of the other file, what was put back: not what was refused.

The rollback put the previous file back at dest, but the Syncer's memory of the dest (what
every pass gives the target of the files it did not change) kept the refused one: a pool change
in haproxy.cfg, which has nothing wrong, was then checked against two.cfg's refused `bind` on a
port another process holds, refused and rolled back in its turn, for as long as that port was
held (the pool change not served, `/ready` 503 on a file that was fine). And its reload stayed
owed though HAProxy ran the file put back: what HAProxy ran of it counted as unknown, and with
it the whole configuration (see the maintenance test).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, LiveServer, live_servers
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.haproxy_files import watching
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

TWO = """frontend fe_two
    bind 127.0.0.1:{port}
    default_backend be_two
{{% if exists("/two/extra") %}}
frontend fe_extra
    bind 127.0.0.1:{{{{ getv("/two/extra") | port }}}}
    default_backend be_two
{{% endif %}}
backend be_two
    balance roundrobin
{{% for kv in gets("/two/servers/*") %}}    server {{{{ kv.key | base | identifier }}}} \
127.0.0.1:{{{{ kv.value | port }}}}
{{% endfor %}}"""


def _two_files(stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """haproxy.cfg (be_web: a) and two.cfg (be_two: x) of one HAProxy, running."""
    dest = stack.base / "two.cfg"
    write_resource(stack.confdir, "two", TWO.format(port=free_port()),
                   f'dest = "{dest}"\nkeys = ["/two"]\n[haproxy]\n'
                   f'master_socket = "{stack.master}"\nruntime_socket = "{stack.admin}"\n')
    stack.others = (dest,)
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.put("/two/servers/x", str(backends["b"].port))
    stack.sync_ok()
    stack.start()


@contextmanager
def _watching(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
              tmp_path: Path) -> Iterator[tuple[HAProxyStack, WatchProcess, socket.socket]]:
    """`_two_files` under `watch`, and a socket to hold a port with: (stack, watch, held)."""
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    held = socket.socket()
    try:
        _two_files(stack, backends)
        with watching(stack, tmp_path) as watch:
            yield stack, watch, held
    finally:
        held.close()
        stack.stop()


def _refused(stack: HAProxyStack, watch: WatchProcess, held: socket.socket,
             server: int | None = None) -> int:
    """two.cfg is given a `bind` on a port `held` holds (and be_two/z on port `server`, in
    the same txn): its reload is refused, rolled back."""
    held.bind(("127.0.0.1", 0))
    held.listen()
    port: int = held.getsockname()[1]
    c = stack.client
    c.transaction(compare=[], failure=[], success=[
        c.transactions.put(f"{stack.prefix}/two/extra", str(port)),
        *([c.transactions.put(f"{stack.prefix}/two/servers/z", str(server))]
          if server is not None else [])])
    watch.wait_log("refusing to reload into it")
    assert f"bind 127.0.0.1:{port}" not in (stack.base / "two.cfg").read_text()
    return port


def _until(predicate: Callable[[], bool], watch: WatchProcess, timeout: float = 4) -> None:
    try:
        wait_for(predicate, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"not met; log:\n{watch.output()[-3000:]}") from None


def _web(stack: HAProxyStack) -> dict[str, LiveServer]:
    return live_servers(AdminSocket(stack.admin))["be_web"]


def test_a_rolled_back_file_does_not_hold_back_the_other_files_changes(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """The other file's pool change is made live (it was refused with two.cfg's `bind`), and
    what two.cfg's rollback took away is not: not its server z either."""
    with _watching(haproxy_binary, etcd, backends, tmp_path) as (stack, watch, held):
        port = _refused(stack, watch, held, server=backends["c"].port)
        stack.put_instance("web", "c", backends["c"].port)  # haproxy.cfg: a pool change
        _until(lambda: "c" in _web(stack), watch)
        # (nor is the refused two.cfg's server sent through the runtime API by that pass)
        assert set(live_servers(AdminSocket(stack.admin))["be_two"]) == {"x"}
        held.close()  # the fault stops: two.cfg is made live by its retry
        _until(lambda: http_get(port)[0] == 200, watch, timeout=10)
        assert set(live_servers(AdminSocket(stack.admin))["be_two"]) == {"x", "z"}
        assert "Traceback" not in watch.output()


def test_a_maintenance_etcd_lifts_beside_a_rolled_back_file_is_lifted(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """A rolled-back file kept its reload owed, so its passes took what HAProxy ran of it for
    unknown, and with it the whole configuration: the maintenance etcd had set at runtime on a
    server of the other file, lifted now, was kept as if an operator's (server out of rotation,
    and for good: later passes found its line unchanged)."""
    with _watching(haproxy_binary, etcd, backends, tmp_path) as (stack, watch, held):
        stack.put_instance("web", "a", backends["a"].port, state="maint")
        _until(lambda: _web(stack)["a"].maint, watch)
        port = _refused(stack, watch, held)
        stack.put_instance("web", "a", backends["a"].port)  # etcd: back in rotation
        _until(lambda: not _web(stack)["a"].maint, watch)
        held.close()
        _until(lambda: http_get(port)[0] == 200, watch, timeout=10)
        assert not _web(stack)["a"].maint
        assert spread(stack.port, 2) == {"a": 2}
        assert "Traceback" not in watch.output()
