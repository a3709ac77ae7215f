"""A watch's change is read and installed in one call on the dest's worker (sync.py `_install`
with `expected`), rendered first against what the Syncer last left at dest; anything else at
dest since is read and judged as before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from confsync.dest_io import DestIo
from confsync.mirror import Mirror
from confsync.outcome import UNCHANGED, UPDATED
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.sync import Syncer


class _Counted:
    """Counts the calls of a method it wraps."""

    def __init__(self, obj: object, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        fn = getattr(obj, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(obj, name, counted)


def _setup(tmp_path: Path) -> tuple[Syncer, Resource, Mirror]:
    (tmp_path / "t.tmpl").write_text("value = {{ getv('/app/v') }}\n")
    res = Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "app.conf", keys=("/app",), prefix="")
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/app/v": b"1"}))
    syncer = Syncer(Renderer(tmp_path), mirror, io=DestIo())
    assert syncer.apply([res])[0].status is UPDATED  # the first look: read, then install
    return syncer, res, mirror


def _put(mirror: Mirror, value: bytes) -> None:
    mirror.apply(ChangeBatch(mirror.revision + 1, (Change("/app/v", value),)))


def test_a_change_takes_one_call_on_the_dests_worker(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """It took two (read dest; render on the loop; install), each a thread hop there and
    back: ~0.1 ms of a small template's put -> file."""
    syncer, res, mirror = _setup(tmp_path)
    assert syncer.io is not None
    calls = _Counted(syncer.io, "call", monkeypatch)
    for n in range(2, 5):
        _put(mirror, str(n).encode())
        outcome = syncer.apply([res])[0]
        assert outcome.status is UPDATED, outcome
        assert res.dest.read_text() == f"value = {n}\n"
    assert calls.calls == 3


def test_a_dest_changed_behind_our_back_is_read_and_judged_before_the_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, res, mirror = _setup(tmp_path)
    other = tmp_path / "other"
    other.write_text("value = 9\n")
    os.chmod(other, 0o600)
    os.replace(other, res.dest)  # another writer (dpkg, an operator)
    _put(mirror, b"2")
    outcome = syncer.apply([res])[0]
    assert outcome.status is UPDATED
    assert outcome.previous is not None and outcome.previous.content == b"value = 9\n"
    assert res.dest.read_text() == "value = 2\n"
    assert res.dest.stat().st_mode & 0o777 == 0o600  # the mode found is kept (none is set)
    # ...and one that already holds the new render is left alone.
    other.write_text("value = 3\n")
    os.chmod(other, 0o600)
    os.replace(other, res.dest)
    inode = res.dest.stat().st_ino
    _put(mirror, b"3")
    assert syncer.apply([res])[0].status is UNCHANGED
    assert res.dest.stat().st_ino == inode


def test_a_render_equal_to_the_file_renders_once_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, res, mirror = _setup(tmp_path)
    renders = _Counted(syncer.renderer, "render_result", monkeypatch)
    inode = res.dest.stat().st_ino
    _put(mirror, b"1")  # the same value again (another key of the prefix alike)
    assert syncer.apply([res])[0].status is UNCHANGED
    assert renders.calls == 1
    assert res.dest.stat().st_ino == inode


def test_a_dest_changed_behind_our_back_is_rendered_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, res, mirror = _setup(tmp_path)
    renders = _Counted(syncer.renderer, "render_result", monkeypatch)
    res.dest.write_text("edited\n")  # no data change: a drift repair
    assert syncer.apply([res])[0].status is UPDATED
    assert res.dest.read_text() == "value = 1\n"
    _put(mirror, b"2")
    other = tmp_path / "other"
    other.write_text("edited again\n")
    os.replace(other, res.dest)
    assert syncer.apply([res])[0].status is UPDATED
    assert res.dest.read_text() == "value = 2\n"
    assert renders.calls == 2
