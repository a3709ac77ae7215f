"""Runtime strategy, confsync killed between installing a change and making it live.

A file newer than HAProxy's worker is the rule under the runtime strategy, and a successor
compared only HAProxy's servers with the file: a structural change (a backend's health check
path, here) killed before its reload stayed unloaded for good. The running copy kept beside the
file (`.haproxy.cfg.confsync-running`) tells the successor what HAProxy runs: it reloads for a
structural change and sends runtime commands for a pool change, as the killed process would have.

The kill window is made real: a second resource takes the same change and its check blocks, so
the HAProxy file is installed and its reload (done after every file of the pass) not yet.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

BLOCKING_CHECK = """#!/bin/sh
if [ -e "$1/flag" ]; then echo $$ > "$1/check.pid"; sleep 30; fi
exit 0
"""


def _watch(stack: HAProxyStack, log: Path) -> WatchProcess:
    return WatchProcess(*stack.cli_args(), "--wait-min", "0", log=log)


@pytest.mark.parametrize("change", ["structural", "pool"])
def test_a_change_killed_before_it_was_live_is_made_live_by_the_next_watch(
        shipped: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path,
        change: str) -> None:
    stack = shipped
    check = tmp_path / "check.sh"
    check.write_text(BLOCKING_CHECK)
    check.chmod(0o755)
    write_resource(stack.confdir, "zz", "{{ getvs('/services/web/instances/*') | join(',') }} "
                   "{{ getv('/services/web/config') }}\n",
                   f'dest = "{tmp_path / "zz.conf"}"\nkeys = ["/services"]\n'
                   f'check_cmd = ["{check}", "{tmp_path}"]')
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    assert spread(stack.port, 4) == {"a": 4}
    first = _watch(stack, tmp_path / "first.log")
    try:
        first.wait_log("watching /", timeout=15)
        (tmp_path / "flag").touch()
        if change == "structural":
            stack.put("/services/web/config", {"check_path": "/other"})
        else:
            stack.client.put(f"{stack.prefix}/services/web/instances/b",
                             json.dumps({"address": "127.0.0.1", "port": backends["b"].port}))
        wait_for(lambda: (tmp_path / "check.pid").exists(), timeout=10)
        first.proc.kill()  # SIGKILL, as the OOM killer does it
        first.proc.wait(timeout=10)
    finally:
        first.stop()
        if (tmp_path / "check.pid").exists():
            os.killpg(int((tmp_path / "check.pid").read_text()), signal.SIGKILL)
    text = stack.cfg.read_text()
    assert ("GET /other" in text) if change == "structural" else ("server b " in text)
    running = stack.cfg.with_name(".haproxy.cfg.confsync-running")
    assert "GET /healthz" in running.read_text() and "server b " not in running.read_text()
    reloads = stack.status().reloads
    (tmp_path / "flag").unlink()

    second = _watch(stack, tmp_path / "second.log")
    try:
        second.wait_log("watching /", timeout=15)
        if change == "structural":
            wait_for(lambda: stack.status().reloads == reloads + 1, timeout=10)
        else:  # the pool: through the runtime API, from what HAProxy ran; no reload
            wait_for(lambda: set(spread(stack.port, 6)) == {"a", "b"}, timeout=10)
            assert stack.status().reloads == reloads
            assert "runtime API" in second.output()
        wait_for(lambda: not running.exists(), timeout=5)
        assert "still owed" in second.output() and "Traceback" not in second.output()
    finally:
        second.stop()
