"""What a real `confsync watch` logs of a failure that changes cause and of a flapping value,
against real etcd (the pure logic: tests/unit/test_repeated_failures.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

# `bad`: a missing key; `worse`: a value its filter refuses; anything else renders.
TEMPLATE = ("{% set v = getv('/k/v') %}{% if v == 'bad' %}{{ getv('/k/missing') }}"
            "{% elif v == 'worse' %}{{ v | port }}{% endif %}value={{ v }}\n")


def test_a_new_cause_says_the_old_ones_count_and_a_flapping_value_is_summarized(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A failure that changed cause dropped the count of the old one's unlogged repeats; a
    value flapping between good and bad logged an ERROR and an INFO at every flap, forever.
    Now the new cause's line says the old count, and past three failures in five minutes a
    summary is logged, then nothing more at INFO or above while the flapping goes on."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\nwait_min = "0s"\n')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--log-level", "debug", "--log-format", "json",
                     log=tmp_path / "watch.log")
    watchers.append(w)

    def records() -> list[dict[str, Any]]:
        return [r for r in (json.loads(line) for line in w.output().splitlines()
                            if line.startswith("{"))
                if r.get("resource") == "app" and "outcome" in r]

    def put(key: str, value: str) -> dict[str, Any]:
        """Put, and wait for the apply it causes: its record."""
        before = len(records())
        c.put(prefix + key, value)
        wait_for(lambda: len(records()) > before, 20, what=f"the apply of {key}={value}\n"
                 f"{w.output()[-3000:]}")
        return records()[-1]

    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    # ... and its record: written by the log's own thread, it came after a put's count of
    # records once (at -n 6), and was taken for that put's apply.
    wait_for(lambda: len(records()) >= 1, 20, what=f"the first render's record\n"
             f"{w.output()[-3000:]}")
    assert put("/k/v", "bad")["level"] == "error"
    for n in range(2):  # the same failure at two more data changes: not logged
        assert put("/k/other", str(n))["level"] == "debug"
    worse = put("/k/v", "worse")
    assert worse["level"] == "error" and worse["previous_unlogged_failures"] == 2, worse
    assert "(the previous failure, render failed:" in worse["message"], worse
    assert "/k/missing not found" in worse["message"], worse
    assert "repeated 2 times unlogged)" in worse["message"], worse

    levels = []
    for _ in range(6):  # a value flapping: good, bad, good, bad ...
        levels += [put("/k/v", "1")["level"], put("/k/v", "bad")["level"]]
    # The failures at "bad" and "worse" switched once (the first recovery is the flap's
    # first); then two more recoveries and failures are said, the next is the summary ...
    assert levels[:6] == ["info", "error", "info", "error", "info", "error"], levels
    summary = records()[-7]
    assert "failing intermittently: 4 failures, 3 recoveries in the last" in \
        summary["message"] and "last: render failed:" in summary["message"], summary
    # ... and nothing more at INFO or above while it goes on (it was 2 lines a flap).
    assert levels[6:] == ["debug"] * 6, levels
    # A SIGHUP (a deploy) says the failure again at once, as a summary: not as three more
    # flaps one by one, with each recovery between.
    before = len(records())
    w.signal(signal.SIGHUP)
    w.wait_log("configuration reloaded", timeout=20)
    again = records()[before:]
    assert [r["level"] for r in again] == ["error"], again
    assert "failing intermittently: 3 failures, 3 recoveries" in again[0]["message"], again
    assert [put("/k/v", "1")["level"], put("/k/v", "bad")["level"]] == ["debug", "debug"]
    assert w.proc.poll() is None


def test_a_reread_retried_while_cut_off_from_etcd_is_said_once_then_its_outcome(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """A compaction the watch missed, then etcd gone while the re-read waits its jitter:
    each retry of the re-read logged "re-reading every key (compacted)" at INFO (~10 s apart
    once the backoff grew) for as long as etcd stayed away. Now the first try is INFO, the
    others DEBUG with their count, and the re-read that works says so at INFO."""
    etcd = etcd_private
    client(etcd.endpoint).put("/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "value={{ getv('/k/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\nwait_min = "0s"\n')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--log-level", "debug", log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")

    def rereads() -> list[str]:
        return [line for line in w.output().splitlines() if "re-reading every key" in line]

    for n in range(2, 5):  # (a re-read that beats the kill, its jitter ~0 s, goes again)
        compactions = w.output().count("compacted (up to")
        w.signal(signal.SIGSTOP)  # the watch sees none of what follows until etcd is gone
        try:
            etcd.kill()
            etcd.start()
            c = client(etcd.endpoint)
            c.put("/k/v", str(n))
            c.put("/k/other", str(n))
            c.compact(c.get("/k/other")[1].mod_revision)
        finally:
            w.signal(signal.SIGCONT)
        w.wait_log("compacted (up to", timeout=30, count=compactions + 1)
        etcd.kill()
        tried = len(rereads())
        wait_for(lambda: len(rereads()) >= tried + 2 or read(dest) == f"value={n}\n", 30,  # noqa: B023
                 what=f"re-reads that fail\n{w.output()[-3000:]}")
        if read(dest) != f"value={n}\n":
            break
        etcd.start()
    else:
        raise AssertionError(f"every re-read beat the kill\n{w.output()[-3000:]}")
    etcd.start()
    wait_for(lambda: read(dest) == f"value={n}\n", 60, what=f"the re-read\n{w.output()[-3000:]}")
    cycle = w.output().rsplit("compacted (up to", 1)[1]  # this cycle's tries
    these = [line for line in cycle.splitlines() if "re-reading every key" in line]
    assert " INFO re-reading every key (compacted) after " in these[0], these
    assert len(these) >= 3 and all(" DEBUG " in line for line in these[1:]), these
    w.wait_log("re-read every key (compacted) at revision", timeout=10)
    assert w.proc.poll() is None
