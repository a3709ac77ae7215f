"""A bug in a watch session's thread or callback ends the session, never the watching.

Two parts of a session run outside the follower: its position check (a thread) and its watch
callback (the etcd client's thread). An exception nothing expected killed the check thread
alone, and the watch went on without its silence limit and its reset checks under a green
/ready; in the callback, the client logged it and dropped the response, so that change was
never rendered. No real condition raises there today: the bug is injected into the real
`confsync watch` process by a sitecustomize, against a real etcd.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

pytestmark = [pytest.mark.etcd]

# Replaces one EtcdStore/_EtcdWatch method by one that raises once, when `when(args)` holds.
INJECT = """
import confsync.stores.etcd as etcd

def inject(owner, name, when):
    original = getattr(owner, name)
    done = []
    def broken(*args):
        if not done and when(args):
            done.append(True)
            raise RuntimeError("injected bug in " + name)
        return original(*args)
    setattr(owner, name, broken)

"""


def _start(tmp_path: Path, etcd: EtcdMember, prefix: str, injection: str,
           env: dict[str, str] | None = None) -> tuple[WatchProcess, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(INJECT + injection)
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "app", "{{ getv('/app/v', 'none') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", log=tmp_path / "watch.log",
                     env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}", **(env or {})})
    return w, dest


def test_a_position_check_that_dies_reopens_the_watch_with_a_new_one(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """etcd's progress notifications come every 10 min by default: with a 2 s silence limit
    the check reports the quiet watch. Only a check thread that lives can."""
    w, dest = _start(tmp_path, etcd, prefix,
                     "inject(etcd._EtcdWatch, '_not_counting_a_stop', lambda args: True)\n",
                     env={"CONFSYNC_ETCD_SILENCE_LIMIT": "2s"})
    watchers.append(w)
    wait_for(lambda: read(dest) == "none\n", 20, what="first render")
    w.wait_log("injected bug in _not_counting_a_stop", timeout=20)
    w.wait_log("silent for", timeout=30)  # the new session's check
    assert "unexpected error in confsync-etcd-check" in w.output()
    client(etcd.endpoint).put(prefix + "/app/v", "after")
    wait_for(lambda: read(dest) == "after\n", 20, what="the reopened watch following")
    assert w.stop() == 0, w.output()[-3000:]


def test_a_watch_callback_that_fails_loses_no_change(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    w, dest = _start(tmp_path, etcd, prefix,
                     "inject(etcd.EtcdStore, '_saw_write', lambda args: args[1].value == b'two')\n")
    watchers.append(w)
    c = client(etcd.endpoint)
    c.put(prefix + "/app/v", "one")
    wait_for(lambda: read(dest) == "one\n", 20, what="first value")
    c.put(prefix + "/app/v", "two")  # its response raises in the callback
    wait_for(lambda: read(dest) == "two\n", 20,
             what=f"the change whose callback failed; log:\n{w.output()[-3000:]}")
    assert "injected bug in _saw_write" in w.output()
    c.put(prefix + "/app/v", "three")
    wait_for(lambda: read(dest) == "three\n", 20, what="the reopened watch following")
    assert w.stop() == 0, w.output()[-3000:]
