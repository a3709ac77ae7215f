"""/ready after an outage: 200 only once the files hold what the watch caught up with.

A watch that comes back from an outage brings what it missed (a snapshot after a compaction,
a replay), and its renders wait for their debounce (`wait_min`) and, with several prefixes,
the replay hold. /ready said 200 as soon as the stream was back: for that wait it vouched for
files as old as the outage (measured with the default `wait_min`: 0.3-0.5 s, caught 3 times in
two 300 s runs of a chaos proxy, files 150-250 writes behind). As at the start ("first
render not finished"), /ready now waits for those renders.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import ready
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.etcd


def _stale_ready_answers(port: int, dest: Path, fresh: str, done: threading.Event,
                         seen: list[str]) -> None:
    """Ask /ready until `done`; keep each 200 after which `dest` was still not `fresh` (the
    file is read after the answer, and files only move on: it was stale at the answer)."""
    while not done.is_set():
        status, _ = ready(port, timeout=2.0)
        content = read(dest)
        if status == 200 and content != fresh:
            seen.append(content)
        done.wait(0.01)


@pytest.mark.parametrize("how", ["compacted", "replayed"])
def test_ready_waits_for_the_files_to_catch_up_after_an_outage(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess],
        how: str) -> None:
    """While the link to etcd is cut, /a/n and /b/n move on (and, for "compacted", etcd
    compacts past the watch's resume point: a snapshot catches up; else two prefixes'
    replays). Once the link is back, no /ready 200 comes while the file is still the old
    one. A `wait_min` of 1 s makes the window a second wide (it was 0.1-0.5 s by default)."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\nwait_min = "1s"\n')
    proxy = TcpProxy(etcd.client_port)
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", proxy.endpoint,
                     "--prefix", prefix, "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log")
    watchers.append(w)
    done = threading.Event()
    stale: list[str] = []
    asker = threading.Thread(target=_stale_ready_answers, args=(port, dest, "1 1\n", done, stale),
                             daemon=True)
    try:
        wait_for(lambda: read(dest) == "0 0\n" and ready(port)[0] == 200, 30,
                 what=f"first render\n{w.output()[-2000:]}")
        proxy.close()
        wait_for(lambda: ready(port)[0] == 503, 30, what=f"the outage seen\n{w.output()[-2000:]}")
        c.transaction(compare=[], failure=[], success=[
            c.transactions.put(prefix + "/a/n", "1"), c.transactions.put(prefix + "/b/n", "1")])
        if how == "compacted":
            c.compact(int(c.put(prefix + "/other", "x").header.revision))
        asker.start()
        proxy = TcpProxy(etcd.client_port, port=proxy.port)
        wait_for(lambda: read(dest) == "1 1\n", 30, what=f"the catch-up\n{w.output()[-2000:]}")
        wait_for(lambda: ready(port)[0] == 200, 30, what=f"ready again\n{w.output()[-2000:]}")
    finally:
        done.set()
        proxy.close()
    asker.join(timeout=5)
    assert not stale, (f"/ready said 200 {len(stale)} times while the file still held "
                       f"{stale[0]!r}\n{w.output()[-2000:]}")
