"""What `once` leaves in the temporary directory stays bounded over months of runs.

The Jinja2 bytecode cache and the render memo gained a file per template path (a confdir
deployed to a new directory each release) and per resource name and dest (renames), and
kept the staged file of a writer killed before its rename, forever. Each test runs the real
`confsync once` (file backend) with its own TMPDIR, with files planted as months of runs and
a killed writer leave them (by their mtimes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confsync import cache_prune
from confsync.renderer import Renderer
from tests.support.cli import REPO, write_resource

DAY = 86400.0


def _age(path: Path, days: float) -> Path:
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def _plant(path: Path, days: float, content: bytes = b"x") -> Path:
    path.write_bytes(content)
    return _age(path, days)


class Once:
    def __init__(self, tmp_path: Path) -> None:
        self.confdir = tmp_path / "cd"
        self.data = tmp_path / "data.yaml"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.dest = tmp_path / "out"
        self.data.write_text("a: '1'\n")
        self.cache = self.tmpdir / f"_jinja2-cache-{os.getuid()}"
        self.memo = self.tmpdir / f"confsync-memo-{os.geteuid()}"

    def resource(self, name: str, template: str) -> None:
        write_resource(self.confdir, name, template,
                       f'dest = "{self.dest}.{name}"\nkeys = ["/a"]')

    def run(self, **env: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "confsync", "once", "--confdir", str(self.confdir),
             "--backend", "file", "--file", str(self.data)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
            env={**os.environ, "TMPDIR": str(self.tmpdir), **env})
        assert done.returncode == 0, done.stderr


def test_the_bytecode_cache_is_swept_of_unused_entries_and_killed_writers_files(
        tmp_path: Path) -> None:
    s = Once(tmp_path)
    s.resource("used", "{{ getv('/a') }} used\n")
    s.run(CONFSYNC_RENDER_MEMO="false")
    (used,) = s.cache.glob("__confsync_*.cache")
    _age(used, 30)  # compiled a month ago
    inode = used.stat().st_ino
    s.run(CONFSYNC_RENDER_MEMO="false")  # loaded: marked used (no compile, no sweep)
    assert used.stat().st_ino == inode and time.time() - used.stat().st_mtime < DAY
    _age(s.cache / cache_prune.MARKER, 2 / 24)  # swept two hours ago
    gone = [_plant(s.cache / "__confsync_0.9_jinja2_3.0_ab.cache", 8),  # an old release's
            _plant(s.cache / "__confsync_0.9_jinja2_3.0_cd.cacheq1w2e3.tmp", 0.1)]  # killed
    kept = [_plant(s.cache / "__confsync_0.9_jinja2_3.0_ef.cache", 6),
            _plant(s.cache / "__confsync_0.9_jinja2_3.0_ef.cacher4t5y6.tmp", 0.01),  # writing
            _plant(s.cache / "__jinja2_0123.cache", 400)]  # another program's: not ours
    s.resource("new", "{{ getv('/a') }} new\n")  # a compile: the cache grows, and is swept
    s.run(CONFSYNC_RENDER_MEMO="false")
    assert [p for p in gone if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert used.stat().st_ino == inode and time.time() - used.stat().st_mtime < DAY
    assert len(list(s.cache.glob("__confsync_*.cache"))) == 3  # used, new, ef
    assert s.dest.with_name("out.new").read_text() == "1 new\n"


def test_the_render_memo_is_swept_of_renamed_resources_and_killed_writers_files(
        tmp_path: Path) -> None:
    s = Once(tmp_path)
    s.resource("pool", "{{ getv('/a') }}\n")
    s.run()
    (entry,) = [p for p in s.memo.iterdir() if p.name != cache_prune.MARKER]
    _age(entry, 30)  # stood in for every run since
    renamed = _plant(s.memo / ("0" * 40), 8, b"confsync-render-memo-2 a b c 1\n")
    killed = _plant(s.memo / f".{'1' * 40}.4242", 0.1)
    recent = _plant(s.memo / ("2" * 40), 6, b"confsync-render-memo-2 a b c 1\n")
    s.run()  # stood in, data unchanged: nothing written, the entry is marked used
    s.resource("other", "{{ getv('/a') }} other\n")
    _age(s.memo / cache_prune.MARKER, 2 / 24)  # swept two hours ago
    s.run()  # a new entry: swept
    assert not renamed.exists() and not killed.exists()
    assert entry.exists() and recent.exists()
    assert len(list(s.memo.iterdir())) == 4  # pool, other, recent, the sweep's marker


def test_a_sweep_keeps_the_most_recently_used_beyond_the_cap_and_runs_once_an_hour(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_prune, "MAX_ENTRIES", 20)
    monkeypatch.setattr(cache_prune, "MAX_UNLINKS", 4)
    for i in range(26):
        _plant(tmp_path / f"e{i:02}", 6 - i * 0.1)  # e00 the oldest

    def sweep() -> None:
        cache_prune.maybe_sweep(str(tmp_path), lambda n: n.startswith("e"), lambda n: False)

    def left() -> list[str]:
        return sorted(p.name for p in tmp_path.glob("e*"))

    sweep()  # 6 too many, 4 at most per sweep: the next write goes on
    assert left() == [f"e{i:02}" for i in range(4, 26)]
    sweep()
    assert left() == [f"e{i:02}" for i in range(6, 26)]
    _plant(tmp_path / "e99", 0)
    sweep()  # swept in full within the hour: one stat
    assert len(left()) == 21
    _age(tmp_path / cache_prune.MARKER, 2 / 24)
    sweep()
    assert left() == [f"e{i:02}" for i in range(7, 26)] + ["e99"]
    for i in range(20, 46):  # used within the day: kept beyond the cap, the others go first
        _plant(tmp_path / f"e{i:02}", 0.5)
    _age(tmp_path / cache_prune.MARKER, 2 / 24)
    for _ in range(4):  # 13 to go, 4 a sweep
        sweep()
    assert left() == [f"e{i:02}" for i in range(20, 46)] + ["e99"]


@pytest.mark.parametrize("spoil", [b"", b"zeros", b"garbage"])
def test_a_bytecode_cache_file_that_cannot_be_read_is_a_compile_not_a_failed_render(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spoil: bytes) -> None:
    """A power cut after the rename (Jinja2 does not fsync) can leave the file's blocks
    unwritten: an UnpicklingError of the checksum failed every render of the template until
    someone deleted the file."""
    from jinja2.bccache import bc_magic

    from tests.unit.test_renderer import make

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    renderer, res, mirror = make(tmp_path, "{{ getv('/a') }}", {"/a": "ok"})
    assert renderer.render(res, mirror) == "ok"
    (cached,) = tmp_path.glob("_jinja2-cache-*/__confsync_*.cache")
    cached.write_bytes(bc_magic + {b"": b"", b"zeros": b"\0" * 4096}.get(spoil, b"\x80\x04junk"))
    assert Renderer(renderer.templates_dir).render(res, mirror) == "ok"


def test_a_link_planted_where_the_bytecode_cache_goes_is_never_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jinja2's own choice of directory chmods `$TMPDIR/_jinja2-cache-<uid>` to 0700 through
    whatever is there: another user's link made a root confsync chmod the directory of their
    choice (where fs.protected_symlinks is off, or TMPDIR is not sticky)."""
    from tests.unit.test_renderer import make

    tmpdir, victim = tmp_path / "tmp", tmp_path / "victim"
    tmpdir.mkdir()
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (tmpdir / f"_jinja2-cache-{os.geteuid()}").symlink_to(victim)
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))
    renderer, res, mirror = make(tmp_path, "{{ getv('/a') }}", {"/a": "ok"})
    assert renderer.render(res, mirror) == "ok"
    assert renderer.env.bytecode_cache is None
    assert victim.stat().st_mode & 0o777 == 0o755 and list(victim.iterdir()) == []


def test_a_clock_that_was_ahead_never_stops_the_sweeps(tmp_path: Path) -> None:
    """A marker or entry written while the clock ran a year ahead (a VM booted with a wrong
    RTC, set right by NTP later) is not "swept within the hour" nor "used within the day" for
    a year: the directory grew meanwhile."""
    stale = _plant(tmp_path / "old", 8)
    ahead = _plant(tmp_path / "ahead", -365)  # unused since, at a wrong time
    _plant(tmp_path / cache_prune.MARKER, -365, b"")
    cache_prune.maybe_sweep(str(tmp_path), lambda n: n in ("old", "ahead"), lambda n: False)
    assert not stale.exists() and not ahead.exists()
    assert abs(time.time() - (tmp_path / cache_prune.MARKER).stat().st_mtime) < 3600
    used = _plant(tmp_path / "used", -365)
    with open(used, "rb") as fh:  # a use brings it back to now
        cache_prune.refresh(fh.fileno())
    assert abs(time.time() - used.stat().st_mtime) < 3600
