"""`watch --exec`: /ready and the metrics say the child is down as soon as it is, also while
the loop is busy (a long render, check or reload) and has not reaped it yet."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_server import free_port
from tests.support.http_probe import ready


def test_ready_says_the_child_died_while_a_check_runs(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "a.tmpl").write_text("a {{ getv('/a') }}\n")
    slow, checking, pid_file = tmp_path / "slow", tmp_path / "checking", tmp_path / "child.pid"
    (confdir / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path / "a.conf"}"\nkeys = ["/a"]\n'
        f'check_cmd = ["sh", "-c", "test ! -e {slow} || {{ touch {checking}; sleep 4; }}"]\n'
        'check_timeout = "10s"\n')
    data = tmp_path / "data.yaml"
    data.write_text("a: 1\n")
    port = free_port()
    w = WatchProcess("--confdir", str(confdir), "--backend", "file", "--file", str(data),
                     "--exec", f"sh -c 'echo $$ > {pid_file}; exec sleep 60'",
                     "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    try:
        wait_for(lambda: ready(port)[0] == 200, timeout=10, what="ready")
        slow.touch()
        data.write_text("a: 2\n")
        wait_for(checking.exists, timeout=5, what="the slow check")
        os.kill(int(read(pid_file)), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: ready(port)[0] == 503, timeout=2,
                 what="/ready 503 (it said 200 until the check was over)")
        assert time.monotonic() - killed < 1.0
        body = ready(port)[1]
        assert "exec child not running" in body["reasons"], body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            assert "confsync_exec_child_up 0.0" in r.read().decode()
    finally:
        w.stop()
