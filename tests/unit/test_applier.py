"""The apply step on real files: never a partial dest, staged files always cleaned up."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from confsync.applier import DestCache, FileState, Target, install, restore
from confsync.errors import ResourceError
from confsync.resources import Resource


def resource(tmp_path: Path, **kw: object) -> Resource:
    return Resource(name="r", source=tmp_path / "r.toml", src=tmp_path / "t", dest=tmp_path / "d",
                    keys=("/",), prefix="", **kw)  # type: ignore[arg-type]


def target(content: bytes, mode: int = 0o640) -> Target:
    return Target(content, mode, os.geteuid(), os.getegid())


def test_install_sets_mode_and_leaves_no_staged_file(tmp_path: Path) -> None:
    res = resource(tmp_path)
    install(res, target(b"new\n"))
    assert res.dest.read_bytes() == b"new\n"
    assert res.dest.stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_the_replaced_file_held_across_the_rename_is_let_go(tmp_path: Path) -> None:
    # The old file is held open (O_PATH) across the rename, so its inode is freed after it:
    # never a descriptor left behind, whether the rename works or fails.
    res = resource(tmp_path)
    res.dest.write_bytes(b"old\n")

    def ours() -> list[str]:
        """Descriptors of this process on the test's files (a count of all of them met other
        tests' threads closing theirs meanwhile, in CI)."""
        found = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if (link := os.readlink(f"/proc/self/fd/{fd}")).startswith(str(tmp_path)):
                    found.append(link)
        return found

    held = ours()
    for n in range(3):
        install(res, target(f"new {n}\n".encode()))
    assert res.dest.read_bytes() == b"new 2\n"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_bytes(b"")
    with pytest.raises(ResourceError) as err:
        install(res._replace(dest=tmp_path / "dir"), target(b"new\n"))
    assert err.value.step == "install"
    assert ours() == held == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "dir"]


@pytest.mark.parametrize("check", [("false",), ("sleep", "5"), ("/nonexistent/tool",)])
def test_failed_check_keeps_dest_byte_for_byte(tmp_path: Path, check: tuple[str, ...]) -> None:
    res = resource(tmp_path, check_cmd=check, check_timeout=0.2)
    res.dest.write_bytes(b"old\n")
    before = res.dest.stat()
    with pytest.raises(ResourceError) as err:
        install(res, target(b"new\n"))
    assert err.value.step == "check"
    assert res.dest.read_bytes() == b"old\n"
    assert res.dest.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_check_sees_the_staged_file_not_dest(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    res = resource(tmp_path, check_cmd=("sh", "-c", f'cat "$0" > {seen}', "{{src}}"))
    install(res, target(b"staged content\n"))
    assert seen.read_bytes() == b"staged content\n"


def test_missing_directory_is_a_stage_error(tmp_path: Path) -> None:
    res = Resource(name="r", source=tmp_path / "r.toml", src=tmp_path / "t",
                   dest=tmp_path / "no" / "d", keys=("/",), prefix="")
    with pytest.raises(ResourceError, match="stage failed"):
        install(res, target(b"x"))


def test_dest_cache_notices_an_outside_edit(tmp_path: Path) -> None:
    res = resource(tmp_path)
    cache = DestCache()
    install(res, target(b"ours\n"))
    cache.remember(res.dest, FileState(b"ours\n", 0o640, os.geteuid(), os.getegid()))
    assert cache.current(res.dest).content == b"ours\n"
    res.dest.write_bytes(b"someone else\n")
    assert cache.current(res.dest).content == b"someone else\n"
    res.dest.unlink()
    assert cache.current(res.dest).content is None


@pytest.mark.parametrize(("ours", "edited"), [(b"ours\n", b"edited by hand\n"),
                                               (b"port 80\n", b"port 81\n")])
def test_an_edit_made_as_confsync_installs_the_file_is_not_taken_for_its_own(
        tmp_path: Path, ours: bytes, edited: bytes) -> None:
    """Someone rewrote the dest between confsync's rename and its stat of the new file: that
    stat, the other writer's, was remembered as confsync's file, so the heartbeat never saw
    the edit and every render found the dest "up to date" (a hand edit made just after a
    write, never repaired: test_an_interval_or_a_change_that_leaves_the_file_as_it_was...
    timed out on a loaded machine). An edit that kept the size (`port 80` -> `port 81`) was
    still taken for confsync's file by its size alone."""
    res = resource(tmp_path)
    cache = DestCache()
    install(res, target(ours))
    res.dest.write_bytes(edited)  # (in the window)
    cache.remember(res.dest, FileState(ours, 0o640, os.geteuid(), os.getegid()))
    assert cache.changed(res.dest)
    assert cache.current(res.dest).content == edited
    assert not cache.changed(res.dest)  # (now seen)


def test_a_group_the_kernel_gave_the_file_is_no_outside_edit(tmp_path: Path) -> None:
    """A dest in a setgid directory gets the directory's group, not the one asked for: the
    file is still confsync's (a read-back comparing owners took it for an outside edit
    after every install, and the heartbeat repaired it in a loop)."""
    res = resource(tmp_path)
    cache = DestCache()
    install(res, target(b"port 80\n"))
    cache.remember(res.dest, FileState(b"port 80\n", 0o640, os.geteuid(), os.getegid() + 1))
    assert not cache.changed(res.dest)


def test_the_file_confsync_installed_is_remembered_without_a_read_at_the_next_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steady state: after remember, a look stats the file and reads nothing."""
    import confsync.applier as applier

    res = resource(tmp_path)
    cache = DestCache()
    install(res, target(b"port 80\n"))
    cache.remember(res.dest, FileState(b"port 80\n", 0o640, os.geteuid(), os.getegid()))
    monkeypatch.setattr(applier, "_read_with_signature", lambda path: pytest.fail("read"))
    assert not cache.changed(res.dest)
    assert cache.current(res.dest).content == b"port 80\n"


def test_restore_previous_and_absent(tmp_path: Path) -> None:
    res = resource(tmp_path)
    install(res, target(b"new\n"))
    restore(res, FileState(b"old\n", 0o600, os.geteuid(), os.getegid()))
    assert res.dest.read_bytes() == b"old\n"
    assert res.dest.stat().st_mode & 0o777 == 0o600
    restore(res, FileState(None))
    assert not res.dest.exists()


def test_a_file_s_mode_0000_is_kept_like_any_other_mode(tmp_path: Path) -> None:
    """A resource without `mode` keeps the file's: `chmod 000` too. Mode 0 was read as no
    mode and the file written (or rolled back) with 0644, readable by everyone."""
    res = resource(tmp_path)
    res.dest.write_bytes(b"old\n")
    os.chmod(res.dest, 0o000)
    current = FileState.read(res.dest)
    assert Target.for_resource(res, b"old\n", current).matches(current)
    install(res, Target.for_resource(res, b"new\n", current))
    assert res.dest.stat().st_mode & 0o7777 == 0o000
    restore(res, current)
    assert res.dest.read_bytes() == b"old\n" and res.dest.stat().st_mode & 0o7777 == 0o000


def test_a_dangling_link_gets_its_target_and_a_restore_keeps_the_link(tmp_path: Path) -> None:
    """A dest linking to a file not yet there: the target is created (a chain of links is
    followed to its end); rolling back to "no file" removes the target, never the link."""
    res = resource(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "middle").symlink_to("real/conf")
    res.dest.symlink_to("middle")
    install(res, target(b"new\n"))
    assert res.dest.is_symlink() and (tmp_path / "middle").is_symlink()
    assert (tmp_path / "real" / "conf").read_bytes() == b"new\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["conf"]
    restore(res, FileState(None))
    assert res.dest.is_symlink() and not (tmp_path / "real" / "conf").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a link owned by another user needs root")
def test_a_link_owned_by_another_user_is_not_followed(tmp_path: Path) -> None:
    """As the kernel's protected_symlinks: a link someone else planted beside a dest must not
    get a root daemon to write the file it points to."""
    res = resource(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    res.dest.symlink_to(victim)
    os.lchown(res.dest, 65534, 65534)
    with pytest.raises(ResourceError) as failed:
        install(res, target(b"new\n"))
    assert failed.value.step == "stage"
    assert "owned by uid 65534" in str(failed.value)
    assert victim.read_bytes() == b"precious\n"
    assert res.dest.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        res.dest.name, "victim"]
    os.lchown(res.dest, 0, 0)  # the same link, owned by root: followed
    install(res, target(b"new\n"))
    assert victim.read_bytes() == b"new\n" and res.dest.is_symlink()


def test_a_syncer_finds_an_edit_made_just_after_its_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the Syncer: an edit of the same size lands right after the rename (before
    the file is remembered); the next drift look finds it, and the next apply repairs it."""
    import confsync.sync as sync
    from confsync.mirror import Mirror
    from confsync.outcome import UPDATED
    from confsync.renderer import Renderer
    from confsync.stores import Snapshot

    (tmp_path / "t").write_text("port {{ getv('/port') }}\n")
    res = Resource(name="r", source=tmp_path / "r.toml", src=tmp_path / "t",
                   dest=tmp_path / "d", keys=("/port",), prefix="")
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/port": b"80"}))
    syncer = sync.Syncer(Renderer(tmp_path), mirror)
    real = sync.install

    def install_then_edit(*args: object, **kw: object) -> float | None:
        took = real(*args, **kw)  # type: ignore[arg-type]
        res.dest.write_bytes(b"port 81\n")  # (someone else, in the window)
        return took

    monkeypatch.setattr(sync, "install", install_then_edit)
    assert syncer.apply([res])[0].status == UPDATED
    monkeypatch.setattr(sync, "install", real)
    assert syncer.drifted([res]) == [res]
    assert syncer.apply([res])[0].status == UPDATED
    assert res.dest.read_bytes() == b"port 80\n"
    assert syncer.drifted([res]) == []
