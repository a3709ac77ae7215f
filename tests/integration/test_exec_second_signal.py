"""A second SIGTERM while confsync stops cuts its exec child's stop_timeout short.

An operator who sends SIGTERM (or presses ^C) a second time wants the process gone now; with
a child that ignores its stop signal, `watch --exec` and `register --exec` used to wait out the
whole stop_timeout (10 s by default, set to 30 s here) whatever else arrived.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.daemon import read, wait_for
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.register import RegisterProcess, write_registration

STOP_TIMEOUT = "30s"

# Writes "ready", then "term" at each SIGTERM, which it otherwise ignores.
STUBBORN = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: log.write("term\\n"))
log.write("ready\\n")
for _ in range(1200):
    time.sleep(0.1)
"""


def _child(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    ready = tmp_path / "child.log"
    return f"{sys.executable} {script} {ready}", ready


def _twice(proc: subprocess.Popen[bytes], child_log: Path) -> float:
    """SIGTERM, wait until the child had its stop signal, SIGTERM again; seconds from the
    second to confsync's exit."""
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "term" in read(child_log), timeout=10, what="the child's SIGTERM")
    time.sleep(0.3)
    assert proc.poll() is None, "confsync waits for its child's stop_timeout"
    second = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return time.monotonic() - second


def test_watch_exec_second_sigterm_kills_the_child_at_once(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "a.tmpl").write_text("a {{ getv('/a') }}\n")
    (confdir / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path / "a.conf"}"\nkeys = ["/a"]\n')
    data = tmp_path / "data.yaml"
    data.write_text("a: 1\n")
    command, ready = _child(tmp_path)
    log = tmp_path / "confsync.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "confsync", "watch", "--confdir", str(confdir), "--backend",
             "file", "--file", str(data), "--exec", command, "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={"CONFSYNC_EXEC_STOP_TIMEOUT": STOP_TIMEOUT, "PATH": "/usr/bin:/bin",
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        wait_for(lambda: "ready" in read(ready), timeout=20, what="the exec child")
        took = _twice(proc, ready)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert took < 3.0, read(log)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "a second stop signal; SIGKILL" in read(log)


def test_register_exec_second_sigterm_kills_the_child_at_once(
        etcd: EtcdMember, prefix: str, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    port = free_port()
    write_registration(tmp_path / "conf", "web", "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in
        {"service": "web", "port": port, "id": "web-1", "ttl": "2s", "drain": "0s"}.items()))
    command, ready = _child(tmp_path)
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--exec", command, log=tmp_path / "register.log",
                           env={"CONFSYNC_EXEC_STOP_TIMEOUT": STOP_TIMEOUT})
    procs.append(proc)
    wait_for(lambda: "ready" in read(ready), timeout=20, what="the exec child")
    took = _twice(proc.proc, ready)
    assert took < 3.0, proc.output()
    assert proc.proc.returncode == 128 + signal.SIGKILL
    assert "a second stop signal; SIGKILL" in proc.output()
