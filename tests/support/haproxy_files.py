"""An HAProxy that loads several files confsync writes (`haproxy -f haproxy.cfg -f two.cfg`):
the second file's template, a `confsync once` of other resources over the stack's etcd, and a
`confsync watch` of the stack once it is ready."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cli import REPO
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import free_port
from tests.support.haproxy import HAProxyStack, wait_for
from tests.support.http_probe import ready

# The second file (its own frontend on {port}, be_two's servers from /two/servers/): format it
# with `port` and `options` (what follows each server's address, "" for nothing).
TWO = """frontend fe_two
    bind 127.0.0.1:{port}
    default_backend be_two

backend be_two
    balance roundrobin
{{% for kv in gets("/two/servers/*") %}}    server {{{{ kv.key | base | identifier }}}} \
127.0.0.1:{{{{ kv.value | port }}}}{options}
{{% endfor %}}"""


def once_in(confdir: Path, stack: HAProxyStack) -> None:
    """`confsync once` of the resources in `confdir` (a pass without a reload step, say) over
    the stack's etcd and prefix; it must succeed."""
    once = subprocess.run([sys.executable, "-m", "confsync", "once", "--confdir",
                           str(confdir), *stack.cli_args()[2:]], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert once.returncode == 0, once.stderr


@contextmanager
def watching(stack: HAProxyStack, tmp_path: Path) -> Iterator[WatchProcess]:
    """`confsync watch` of the stack (log in tmp_path/watch.log), from when its /ready says
    200 until the block ends."""
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms",
                         "--metrics-address", f"127.0.0.1:{metrics}",
                         log=tmp_path / "watch.log")
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        yield watch
    finally:
        watch.stop()
