"""A SIGHUP during a resumed watch's replay waits for the replay like any render (pure loop
logic: the daemon is fed its queue's events by hand, with no follower running)."""

from __future__ import annotations

import time
from pathlib import Path

from confsync.daemon import Daemon
from confsync.handoff import BatchReceived
from confsync.settings import Settings, WatchSettings
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.watcher import ReplayArrived, SnapshotTaken, StreamState
from tests.support.cli import write_resource


def _batch(revision: int, key: str, value: bytes) -> BatchReceived:
    return BatchReceived(ChangeBatch(revision, (Change(key, value),), key[:2]))


def _two_prefix_daemon(tmp_path: Path) -> tuple[Daemon, Path]:
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  n: '0'\nb:\n  n: '0'\n")
    dest, confdir = tmp_path / "out", tmp_path / "cd"
    write_resource(confdir, "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]')
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)],
                     "watch.wait_min": "0s", "watch.wait_max": "0s"})
    daemon._handle(SnapshotTaken(Snapshot(5, {"/a/n": b"0", "/b/n": b"0"}), "start"))
    daemon._handle(StreamState(True, 5))
    assert dest.read_text() == "0 0\n"
    daemon._handle(StreamState(False, 5, "lost"))
    return daemon, dest


def test_a_sighup_during_a_replay_renders_no_half_of_a_txn(tmp_path: Path) -> None:
    """After a reconnect etcd replays each prefix's missed revisions apart (its loop for
    lagging watches, every 100 ms): renders wait for the rest. A SIGHUP meanwhile applied its
    set at once: a file with /a of a txn and /b of before, which etcd never held."""
    daemon, dest = _two_prefix_daemon(tmp_path)
    try:
        daemon._handle(_batch(6, "/a/n", b"1"))  # a txn of /a and /b: /a's replay came first
        assert daemon.reload_config()
        assert dest.read_text() == "0 0\n"  # not "1 0"
        daemon._handle(_batch(6, "/b/n", b"1"))
        daemon._handle(StreamState(True, 6))
        later = time.monotonic() + 5  # past the replay hold
        assert daemon._replay_hold(later) is None
        daemon.apply(daemon.planner.due(later))
        assert dest.read_text() == "1 1\n"
    finally:
        daemon.store.close()


def test_renders_wait_for_every_changed_prefix_s_replay_not_for_a_quiet(
        tmp_path: Path) -> None:
    """The hold waited for 0.3 s without a replayed batch: a link that stalled longer as
    the watch came back let /a's replay be rendered beside /b's old value ("40 0" over a
    25 ms link, 2 of 3 runs). etcd's store says which prefixes changed, and when all of
    their replays are in (`ReplayArrived`): renders wait for that."""
    daemon, dest = _two_prefix_daemon(tmp_path)
    try:
        daemon._handle(StreamState(True, 5, replay_until=6, replay_pending=True))
        back = time.monotonic()
        daemon._handle(_batch(6, "/a/n", b"1"))
        assert daemon._replay_hold(back + 1.0) is not None  # (a quiet is no end)
        daemon._handle(_batch(6, "/b/n", b"1"))
        daemon._handle(ReplayArrived())
        assert daemon._replay_hold(back + 1.0) is None
        daemon.apply(daemon.planner.due(back + 1.0))
        assert dest.read_text() == "1 1\n"
    finally:
        daemon.store.close()


def test_a_replay_that_never_arrives_is_replaced_by_a_snapshot(tmp_path: Path) -> None:
    """etcd that never sends a changed prefix's replay (a stalled member) must not hold the
    files for good: past CATCH_UP_MAX every prefix is read at one revision instead."""
    daemon, dest = _two_prefix_daemon(tmp_path)
    asked = []
    daemon.follower.request_resync = lambda: asked.append(True)  # type: ignore[method-assign]
    try:
        daemon._handle(StreamState(True, 5, replay_until=6, replay_pending=True))
        back = time.monotonic()
        daemon._handle(_batch(6, "/a/n", b"1"))
        assert daemon._replay_hold(back + 1.0) is not None
        assert not asked
        assert daemon._replay_hold(back + 3.5) is not None  # the snapshot is on its way
        assert asked == [True]
        daemon._handle(SnapshotTaken(Snapshot(6, {"/a/n": b"1", "/b/n": b"1"}), "resync"))
        assert daemon._replay_hold(back + 3.5) is None
        daemon.apply(daemon.planner.due(back + 3.5))
        assert dest.read_text() == "1 1\n"
    finally:
        daemon.store.close()


def test_a_stream_lost_between_the_parts_of_a_txn_renders_no_half_of_it(
        tmp_path: Path) -> None:
    """etcd sends a txn over /a and /b as one response per watch; a member stopped between
    the two (the etcd upgrade bench: the first txn after a pause met the member's restart)
    sent /b's alone, and the lost stream ended the settle's wait: the loop rendered "0 1",
    a state etcd never held, before the resume brought /a's part."""
    daemon, dest = _two_prefix_daemon(tmp_path)
    try:
        daemon._handle(StreamState(True, 5))
        assert daemon._replay_hold(time.monotonic() + 5) is None  # live for a while
        daemon.events.put(_batch(6, "/b/n", b"1"))
        daemon.events.put(StreamState(False, 5, "lost"))
        daemon._last_beat = time.monotonic()  # (no heartbeat: no follower runs here)
        daemon._iterate()
        assert dest.read_text() == "0 0\n"  # not "0 1"
        assert daemon._replay_hold(time.monotonic() + 60) is not None  # for the outage
        # The resume's check finds /a changed at 6 and waits for its replay.
        daemon._handle(StreamState(True, 5, replay_until=6, replay_pending=True))
        daemon._handle(_batch(6, "/a/n", b"1"))
        daemon._handle(ReplayArrived())
        later = time.monotonic() + 5  # past the replay hold
        assert daemon._replay_hold(later) is None
        daemon.apply(daemon.planner.due(later))
        assert dest.read_text() == "1 1\n"
    finally:
        daemon.store.close()


def test_a_stream_lost_with_nothing_settling_holds_no_render(tmp_path: Path) -> None:
    """Only a loss that meets a revision coming in holds the files: etcd away after a quiet
    leaves renders (a retry, a dest put back) as they were."""
    daemon, _ = _two_prefix_daemon(tmp_path)
    try:
        assert daemon._replay_hold(time.monotonic() + 60) is None
    finally:
        daemon.store.close()
