"""`register` with JSON logs: a thread that dies is one JSON record, and is started again.

Python's own thread-death hook wrote each traceback to stderr itself, beside the log writer:
a line of JSON was cut in two ("Exception in thread {"time": ...}registrar:") and every line
of the traceback reached the collector as an entry of its own. No real condition kills these
threads today: the bugs are injected into the real process by a sitecustomize.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.support.cli import REPO
from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]

INJECT = """
from confsync.register import checks, registrar

def once(owner, name):
    original = getattr(owner, name)
    done = []
    def broken(self):
        if not done:
            done.append(True)
            raise RuntimeError("injected bug in " + name)
        return original(self)
    setattr(owner, name, broken)

once(checks.CheckRunner, "_run")
once(registrar.Registrar, "_loop")
"""


def test_dead_threads_are_logged_as_json_and_started_again(
        etcd: EtcdMember, tmp_path: Path, procs: list[RegisterProcess]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(INJECT)
    prefix = f"/d{uuid.uuid4().hex[:8]}"
    write_registration(tmp_path / "conf", "web",
                       'service = "web"\nport = 20001\nid = "web-1"\nttl = "10s"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n[[check]]\ntype = "exec"\ncommand = ["true"]\n'
                       'interval = "100ms"\nrise = 1\n')
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--log-format", "json", log=tmp_path / "r.log",
                           env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}"})
    procs.append(proc)
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    wait_for(lambda: (published(c, key) or {}).get("state") == "ready", 30,
             what=f"registered after both threads died; log:\n{proc.output()[-3000:]}")
    assert proc.stop() == 0
    records = []
    for line in proc.output().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON record: {line!r}\n{proc.output()[-3000:]}") from None
    messages = [r["message"] for r in records]
    died = [m for m in messages if m.startswith("thread check-web-0 died")]
    assert len(died) == 1 and "injected bug in _run" in died[0], messages
    assert any("check 0 of web stopped unexpectedly" in m for m in messages), messages
    # The registrar says its own death once (not again as a thread death) and is revived.
    assert messages.count("register: the etcd thread failed") == 1, messages
    assert not any(m.startswith("thread registrar died") for m in messages), messages
    assert any("etcd thread stopped unexpectedly" in m for m in messages), messages
