"""Issue 13 at the Syncer: an exception from the reload step, a missing temp dir in `check`,
and the empty-store guard's memory when nothing was rendered before (items 2, 4, 12)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from confsync.haproxy.settings import HAProxySettings
from confsync.mirror import Mirror
from confsync.outcome import FAILED, UNCHANGED, UPDATED
from confsync.plugins import PluginConfig
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Snapshot
from confsync.sync import Syncer


def _setup(tmp_path: Path, data: dict[str, bytes], **kw: object) -> tuple[Syncer, Resource]:
    (tmp_path / "t.tmpl").write_text("{% for kv in gets('/pool/*') %}server {{ kv.value }}\n"
                                     "{% endfor %}")
    res = Resource(name="pool", source=tmp_path / "pool.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "pool.cfg", keys=("/pool",), prefix="",
                   **kw)  # type: ignore[arg-type]
    mirror = Mirror()
    mirror.load(Snapshot(1, data))
    return Syncer(Renderer(tmp_path), mirror), res


def test_an_oserror_from_the_haproxy_master_socket_is_a_reload_failure(tmp_path: Path) -> None:
    # connect() on this path raises a plain OSError ("AF_UNIX path too long").
    master = tmp_path / ("d" * 120) / "master.sock"
    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"},
                         plugin=PluginConfig("haproxy", HAProxySettings(master_socket=master)))
    res.dest.write_text("server 10.0.0.1:80\n")
    (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "reload"
    assert "previous file restored" in str(outcome.error)
    assert res.dest.read_text() == "server 10.0.0.1:80\n"


def test_check_without_a_temp_dir_fails_each_resource(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    (outcome,) = syncer.plan([res])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "check" and "temporary directory" in str(outcome.error)


def test_zero_keys_never_replace_a_non_empty_file_without_memory(tmp_path: Path) -> None:
    syncer, res = _setup(tmp_path, {})
    res.dest.write_text("server 10.0.0.1:80\n")
    for outcome in (*syncer.plan([res]), *syncer.apply([res]), *syncer.apply([res])):
        assert outcome.status == FAILED and outcome.error is not None
        assert outcome.error.step == "guard", outcome.error
    assert res.dest.read_text() == "server 10.0.0.1:80\n"
    # data arrives: rendered; then it vanishes: the in-process memory guards as before
    syncer.mirror.load(Snapshot(2, {"/pool/a": b"10.0.0.2:80"}))
    assert [o.status for o in syncer.apply([res])] == [UPDATED]
    syncer.mirror.load(Snapshot(3, {}))
    assert [o.status for o in syncer.apply([res])] == [FAILED]


def test_zero_keys_render_where_the_file_is_empty_or_equal(tmp_path: Path) -> None:
    syncer, res = _setup(tmp_path, {})
    res.dest.write_text("")
    assert [o.status for o in syncer.apply([res])] == [UNCHANGED]
    syncer, res = _setup(tmp_path, {}, min_keys=0)
    res.dest.write_text("server 10.0.0.1:80\n")
    assert [o.status for o in syncer.apply([res])] == [UPDATED]
    assert res.dest.read_text() == ""


def test_a_dest_renamed_but_not_synced_is_reloaded_by_the_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory fsync fails after the rename (EIO): the file is in place, the reload did
    not run. The retry used to find the file equal to its render and report it up to date, so
    the service never loaded it while /ready said all was well."""
    from confsync import applier

    reloads = tmp_path / "reloads"
    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"},
                         reload_cmd=("sh", "-c", f"echo x >> {reloads}"))
    real_fsync_dir = applier._fsync_dir

    def failing_fsync_dir(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(applier, "_fsync_dir", failing_fsync_dir)
    (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "install" and "cannot fsync" in outcome.error.reason
    assert res.dest.read_text() == "server 10.0.0.2:80\n" and not reloads.exists()
    monkeypatch.setattr(applier, "_fsync_dir", real_fsync_dir)
    (outcome,) = syncer.apply([res])  # the retry
    assert outcome.status == UPDATED and outcome.reload is not None
    assert reloads.read_text() == "x\n"
    (outcome,) = syncer.apply([res])
    assert outcome.status == UNCHANGED and reloads.read_text() == "x\n"


def test_a_rollback_that_cannot_write_does_not_claim_the_file_was_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload failed and the disk filled up before the rollback: the error used to say
    "previous file restored" whatever happened. The retry reloads what is there."""
    from confsync import sync

    def no_space(resource: Resource, previous: object) -> None:
        raise OSError(28, "No space left on device")

    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"}, reload_cmd=("false",))
    res.dest.write_text("server 10.0.0.1:80\n")
    monkeypatch.setattr(sync, "restore", no_space)
    (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and outcome.error is not None
    assert outcome.error.step == "reload"
    assert outcome.error.reason.endswith("the previous file could not be restored")
    assert res.dest.read_text() == "server 10.0.0.2:80\n" and res.name in syncer.reload_owed


def test_a_reload_owed_survives_a_rename_of_its_resource(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file was installed and its reload owed (the rollback could not write), then a
    SIGHUP renamed the resource (pool.toml -> web.toml, same dest). The successor used to carry
    owed reloads by name only: the renamed resource found its render equal to the file and
    never reloaded, so the service ran the old file while /ready said all was well."""

    from confsync import sync

    reloads = tmp_path / "reloads"
    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"},
                         reload_cmd=("sh", "-c", f"echo x >> {reloads}; test -e {tmp_path}/ok"))
    res.dest.write_text("server 10.0.0.1:80\n")

    def no_space(resource: Resource, previous: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sync, "restore", no_space)
    (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and res.dest.read_text() == "server 10.0.0.2:80\n"
    monkeypatch.undo()
    (tmp_path / "ok").touch()
    renamed = res._replace(name="web", source=tmp_path / "web.toml")
    after = syncer.successor(syncer.renderer, syncer.mirror, [renamed])
    reloads.unlink()
    (outcome,) = after.apply([renamed])
    assert outcome.status == UPDATED and outcome.reload is not None
    assert reloads.read_text() == "x\n"
    (outcome,) = after.apply([renamed])
    assert outcome.status == UNCHANGED and reloads.read_text() == "x\n"


def test_foreign_tells_another_writers_file_from_a_touch_or_an_unset_mode(
        tmp_path: Path) -> None:
    """What /ready reports while a drift repair waits: other bytes, or a mode the resource
    sets; not the same bytes written anew, nor a mode it leaves to the file."""
    import os

    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"})
    assert [o.status for o in syncer.apply([res])] == [UPDATED]
    assert not syncer.foreign(res)
    (tmp_path / "new").write_text("server 10.0.0.2:80\n")
    os.replace(tmp_path / "new", res.dest)  # same bytes, new inode: changed, not foreign
    os.chmod(res.dest, 0o600)  # a mode the resource does not set
    assert syncer.drifted([res]) == [res] and not syncer.foreign(res)
    res.dest.write_text("server 10.9.9.9:80\n")
    assert syncer.foreign(res)
    res.dest.unlink()
    assert syncer.foreign(res)
    syncer, moded = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"}, mode=0o644)
    assert [o.status for o in syncer.apply([moded])] == [UPDATED]
    os.chmod(moded.dest, 0o600)
    assert syncer.foreign(moded)


def test_a_dest_that_is_a_fifo_fails_its_resource_and_never_blocks_the_others(
        tmp_path: Path) -> None:
    """A FIFO at a dest (mkfifo by mistake, a log pipe at the wrong path) was opened to be
    read: that blocks until someone writes to it, so the loop, every other resource and the
    heartbeat stopped for good. It fails its own resource, and stays a FIFO."""
    import os
    import stat
    import threading

    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"})
    other = Resource(name="other", source=tmp_path / "other.toml", src=tmp_path / "t.tmpl",
                     dest=tmp_path / "other.cfg", keys=("/pool",), prefix="")
    os.mkfifo(res.dest)
    outcomes: list[object] = []
    applying = threading.Thread(target=lambda: outcomes.extend(syncer.apply([res, other])),
                                daemon=True)
    applying.start()
    applying.join(timeout=30)
    if applying.is_alive():  # unblock the stuck read, so the thread ends with the test
        fd = os.open(res.dest, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        applying.join(timeout=10)
        pytest.fail("the apply blocked on the FIFO")
    first, second = outcomes
    assert first.status == FAILED and first.error is not None  # type: ignore[attr-defined]
    assert "not a regular file" in str(first.error), first.error  # type: ignore[attr-defined]
    assert second.status == UPDATED  # type: ignore[attr-defined]
    assert (tmp_path / "other.cfg").read_text() == "server 10.0.0.2:80\n"
    assert stat.S_ISFIFO(os.lstat(res.dest).st_mode)


def test_a_resource_without_keys_is_not_held_by_the_empty_pool_guard(tmp_path: Path) -> None:
    """keys = [] (a confd resource without keys, converted): it never has keys, so the guard
    against zero keys replacing a non-empty file held it forever at every start."""
    (tmp_path / "t.tmpl").write_text("route={{ getenv('JVM_ROUTE', 'none') }}\n")
    res = Resource(name="route", source=tmp_path / "route.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "route.cfg", keys=(), prefix="")
    res.dest.write_text("route=old\n")
    syncer = Syncer(Renderer(tmp_path), Mirror())
    assert [o.status for o in syncer.apply([res])] == [UPDATED]
    assert res.dest.read_text() == "route=none\n"


def test_a_file_without_a_reload_compares_with_what_is_on_disk_after_a_failed_dir_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No reload action: nothing runs the file, so nothing owes it a reload. A directory fsync
    that failed once kept the file it replaced as "what runs" for good: every later write was
    logged (diff, line counts, "already wrote") against that old file, not what was on disk."""
    from confsync import applier

    syncer, res = _setup(tmp_path, {"/pool/a": b"10.0.0.2:80"})
    res.dest.write_text("server 10.0.0.1:80\n")
    real_fsync_dir = applier._fsync_dir

    def failing_fsync_dir(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(applier, "_fsync_dir", failing_fsync_dir)
    (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and res.dest.read_text() == "server 10.0.0.2:80\n"
    monkeypatch.setattr(applier, "_fsync_dir", real_fsync_dir)
    syncer.mirror.load(Snapshot(2, {"/pool/a": b"10.0.0.3:80"}))
    (outcome,) = syncer.apply([res])
    assert outcome.status == UPDATED and outcome.previous is not None
    assert outcome.previous.content == b"server 10.0.0.2:80\n", outcome.diff
    syncer.mirror.load(Snapshot(3, {"/pool/a": b"10.0.0.1:80"}))
    (outcome,) = syncer.apply([res])
    assert outcome.previous is not None
    assert outcome.previous.content == b"server 10.0.0.3:80\n", outcome.diff
