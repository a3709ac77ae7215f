"""Several resources writing files for one HAProxy (`haproxy -f main.cfg -f two.cfg`).

At its start `confsync watch` asks whether HAProxy runs the files it finds current. The
resources of one HAProxy share a reload target, and only the first one's file was compared:
a change to the second file made while confsync was down (written by `once` of a resource
without a reload step, here) was never made live, with `/ready` 200 on the stale config.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.haproxy_files import TWO, once_in, watching
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


def _two(confdir: Path, stack: HAProxyStack, port: int, strategy: str, reload: bool) -> Path:
    """The second resource (its own frontend and backend) in `confdir`; `reload` false: no
    [haproxy] table, so a pass writes the file and makes nothing live."""
    dest = stack.base / "two.cfg"
    write_resource(confdir, "two", TWO.format(port=port, options=""),
                   f'dest = "{dest}"\nkeys = ["/two"]\n' + (
                       f'[haproxy]\nreload_strategy = "{strategy}"\n'
                       f'master_socket = "{stack.master}"\nruntime_socket = "{stack.admin}"\n'
                       if reload else ""))
    return dest


@pytest.mark.parametrize(("strategy", "first_too"), [
    ("reload", False), ("runtime", False), ("runtime", True)])
def test_a_second_file_changed_while_watch_was_down_is_made_live_at_its_start(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path, strategy: str, first_too: bool) -> None:
    """`first_too`: the first file's pool changed in etcd too, and its start sends that
    through the runtime API: no reload, so it says nothing of the second file by itself (the
    pass compares HAProxy's servers of both files with both files, and brings be_two in step
    too)."""
    two_port = free_port()
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=strategy,
                         others=(Path("two.cfg"),))
    try:
        stack.others = (_two(stack.confdir, stack, two_port, strategy, reload=True),)
        stack.put_basics()
        stack.put_instance("web", "a", backends["a"].port)
        stack.put("/two/servers/x", str(backends["b"].port))
        stack.sync_ok()
        stack.start()
        assert spread(two_port, 4) == {"b": 4}
        reloads = stack.status().reloads
        # confsync is down; etcd adds y, and a pass without a reload step writes two.cfg.
        time.sleep(0.05)  # (the file's mtime after the master socket's, on any clock grain)
        stack.put("/two/servers/y", str(backends["c"].port))
        elsewhere = tmp_path / "confdir"
        elsewhere.mkdir()
        _two(elsewhere, stack, two_port, strategy, reload=False)
        once_in(elsewhere, stack)
        assert f":{backends['c'].port}" in stack.others[0].read_text()
        assert spread(two_port, 4) == {"b": 4}  # HAProxy runs the old two.cfg
        if first_too:
            stack.put_instance("web", "b", backends["b"].port)

        with watching(stack, tmp_path) as watch:
            wait_for(lambda: spread(two_port, 4) == {"b": 2, "c": 2}, timeout=5)
            if first_too:
                assert spread(stack.port, 4) == {"a": 2, "b": 2}
            output = watch.output()
            # (`first_too`: the first file's runtime pass, which sees both files, did it)
            if not first_too:
                assert "resource two:" in output and "making the file live" in output, output
            assert "Traceback" not in output
            assert stack.status().reloads == reloads + (strategy == "reload")
    finally:
        stack.stop()
