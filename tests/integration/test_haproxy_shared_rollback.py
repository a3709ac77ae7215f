"""A file of a shared HAProxy (`haproxy -f haproxy.cfg -f two.cfg`) whose reload failed and
was rolled back is, to the passes of the other file, what was put back: not what was refused.

The rollback put the previous file back at dest, but the Syncer's memory of the dest (what
every pass gives the target of the files it did not change) kept the refused one: a pool change
in haproxy.cfg, which has nothing wrong, was then checked against two.cfg's refused `bind` on a
port another process holds, refused and rolled back in its turn, for as long as that port was
held (the pool change not served, `/ready` 503 on a file that was fine).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, http_get, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready

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


def test_a_rolled_back_file_does_not_hold_back_the_other_files_changes(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    stack = HAProxyStack(haproxy_binary, etcd.endpoint)
    held = socket.socket()
    try:
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
        metrics = free_port()
        watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms",
                             "--metrics-address", f"127.0.0.1:{metrics}",
                             log=tmp_path / "watch.log")
        try:
            wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            stack.put("/two/extra", str(port))  # two.cfg binds a port someone else holds
            watch.wait_log("refusing to reload into it")
            assert f"bind 127.0.0.1:{port}" not in dest.read_text()  # rolled back
            stack.put_instance("web", "c", backends["c"].port)  # haproxy.cfg: a pool change
            try:
                wait_for(lambda: "c" in live_servers(AdminSocket(stack.admin))["be_web"],
                         timeout=4)
            except AssertionError:
                raise AssertionError(f"be_web/c not live:\n{watch.output()[-3000:]}") from None
            held.close()  # the fault stops: two.cfg is made live by its retry
            wait_for(lambda: http_get(port)[0] == 200, timeout=10)
            assert "Traceback" not in watch.output()
        finally:
            watch.stop()
    finally:
        held.close()
        stack.stop()
