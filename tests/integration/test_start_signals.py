"""Signals sent at a daemon while it starts (a logrotate-style SIGUSR1, an operator's SIGHUP just
after a restart) never end it.

SIGHUP, SIGUSR1 and SIGUSR2 end a process that has no handler. `watch` and `register` held
SIGHUP and SIGTERM only once `confsync.cli` was imported (~0.1 s, several times that on a loaded
host), and SIGUSR1/SIGUSR2 never outside exec mode: each ended the process. They are now held
(SIGUSR1/SIGUSR2 ignored) by confsync/start.py, the first code of `confsync` and `python -m
confsync`, before the CLI is imported. (The interpreter's own start, before any of confsync's
code runs, cannot be covered from inside it.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, catches, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

REPO = Path(__file__).resolve().parents[2]
SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

# Runs confsync as `python -m confsync` does, and reports each signal's disposition at the
# moment `confsync.cli` starts to be imported (then exits).
SPY = """
import importlib.abc, json, os, runpy, signal, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "confsync.cli":
            print(json.dumps({s.name: signal.getsignal(s) is not signal.SIG_DFL
                              for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1,
                                        signal.SIGUSR2)}), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
sys.argv = ["confsync", *sys.argv[1:]]
runpy.run_module("confsync", run_name="__main__", alter_sys=True)
"""


def _handled_before_the_cli(command: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", SPY, command], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result: dict[str, bool] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("command", ["watch", "register"])
def test_a_daemon_holds_its_signals_before_the_cli_is_imported(command: str) -> None:
    assert _handled_before_the_cli(command) == {s.name: True for s in SIGNALS}


def test_a_one_shot_command_holds_nothing() -> None:
    """`once` must stay stoppable by SIGTERM's default action, and pays nothing for this."""
    assert _handled_before_the_cli("once") == {s.name: False for s in SIGNALS}


def test_the_console_script_starts_where_the_signals_are_held() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["confsync"] == "confsync.start:entry"


def test_signals_in_a_tight_loop_at_a_starting_watch_never_end_it(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    out = tmp_path / "out"
    write_resource(tmp_path / "cd", "r", "v={{ getv('/k/v') }}\n",
                   f'dest = "{out}"\nkeys = ["/k"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", log=tmp_path / "watch.log")
    watchers.append(w)
    pid = w.proc.pid
    # From the moment it holds SIGHUP (its first code) through its start-up and first render.
    wait_for(lambda: catches(pid, signal.SIGHUP) or w.proc.poll() is not None, 30,
             interval=0.001, what="the signals held")
    sent = 0
    deadline = time.monotonic() + 30
    while w.proc.poll() is None and time.monotonic() < deadline and read(out) != "v=1\n":
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            os.kill(pid, signum)
            sent += 1
        time.sleep(0.005)
    assert w.proc.poll() is None, f"ended by a signal ({w.proc.returncode}) after {sent}:\n" \
                                  f"{w.output()[-2000:]}"
    assert read(out) == "v=1\n" and sent >= 30, sent
    for signum in (signal.SIGUSR1, signal.SIGUSR2):  # and once it runs
        os.kill(pid, signum)
    client(etcd.endpoint).put(prefix + "/k/v", "2")
    wait_for(lambda: read(out) == "v=2\n", 20, what="still following etcd")
    assert w.stop() == 0
