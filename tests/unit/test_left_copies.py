"""A reload owed when its resource goes at a config reload: made if it comes back, its
running copy removed after LEFT_GRACE or at a stop (left_copies.py), at the Syncer.

The file is installed and its reload owed as a failed rollback leaves it (the reload fails,
and the previous file cannot be written back); the config reloads are Syncer successors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync import left_copies, sync
from confsync.mirror import Mirror
from confsync.outcome import FAILED, UNCHANGED, UPDATED
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.running_copy import running_copy
from confsync.stores import Snapshot
from confsync.sync import Syncer


def _owed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Syncer, Resource, Path]:
    """A Syncer whose resource `app` has its file installed and its reload owed; the path of
    the file each reload appends to (they work from now on)."""
    (tmp_path / "t.tmpl").write_text("{{ getv('/a') }}\n")
    reloads = tmp_path / "reloads"
    app = Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "app.conf", keys=("/a",), prefix="",
                   reload_cmd=("sh", "-c", f"test -e {tmp_path}/up && echo x >> {reloads}"))
    app.dest.write_text("old\n")
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/a": b"new"}))
    syncer = Syncer(Renderer(tmp_path), mirror)

    def no_space(resource: Resource, previous: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(sync, "restore", no_space)
        (outcome,) = syncer.apply([app])
    assert outcome.status == FAILED and app.dest.read_text() == "new\n"
    assert running_copy(app.dest).read_text() == "old\n"
    (tmp_path / "up").touch()
    return syncer, app, reloads


def test_a_resource_added_back_makes_its_owed_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, app, reloads = _owed(tmp_path, monkeypatch)
    without = syncer.successor(syncer.renderer, syncer.mirror, [])
    assert running_copy(app.dest).exists()  # kept for it to come back
    back = without.successor(without.renderer, without.mirror, [app])
    (outcome,) = back.apply([app])
    assert outcome.status == UPDATED and reloads.read_text() == "x\n"
    assert not running_copy(app.dest).exists()
    (outcome,) = back.apply([app])
    assert outcome.status == UNCHANGED and reloads.read_text() == "x\n"


def test_a_reload_given_back_to_the_same_dest_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left reloading nothing (its file still applied), then its reload_cmd restored."""
    syncer, app, reloads = _owed(tmp_path, monkeypatch)
    bare = app._replace(reload_cmd=())
    without = syncer.successor(syncer.renderer, syncer.mirror, [bare])
    assert [o.status for o in without.apply([bare])] == [UNCHANGED]
    back = without.successor(without.renderer, without.mirror, [app])
    (outcome,) = back.apply([app])
    assert outcome.status == UPDATED and reloads.read_text() == "x\n"


def test_a_copy_nothing_takes_up_goes_after_the_grace_or_at_a_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, app, _ = _owed(tmp_path, monkeypatch)
    without = syncer.successor(syncer.renderer, syncer.mirror, [])
    without.tidy()  # a heartbeat within the grace
    assert running_copy(app.dest).exists()
    monkeypatch.setattr(left_copies, "LEFT_GRACE", 0.0)
    without.tidy()
    assert not running_copy(app.dest).exists()

    (tmp_path / "second").mkdir()
    syncer, app, _ = _owed(tmp_path / "second", monkeypatch)
    without = syncer.successor(syncer.renderer, syncer.mirror, [])
    again = without.successor(without.renderer, without.mirror, [])  # carried on
    monkeypatch.setattr(left_copies, "LEFT_GRACE", 600.0)
    again.tidy()
    assert running_copy(app.dest).exists()
    again.drop_left()  # the daemon stops
    assert not running_copy(app.dest).exists() and app.dest.read_text() == "new\n"
