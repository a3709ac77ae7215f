"""Issue 13, items 3, 16 and 17 at the apply step, on real files and real child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.applier import Target, install, remove_stale_staged
from confsync.commands import run_command
from confsync.errors import ResourceError
from confsync.resources import Resource


def resource(tmp_path: Path, **kw: object) -> Resource:
    return Resource(name="r", source=tmp_path / "r.toml", src=tmp_path / "t",
                    dest=tmp_path / "app.conf", keys=("/",), prefix="", **kw)  # type: ignore[arg-type]


def test_an_id_beyond_uid_t_at_chown_is_a_resource_error(tmp_path: Path) -> None:
    res = resource(tmp_path)
    res.dest.write_bytes(b"old\n")
    with pytest.raises(ResourceError) as err:
        install(res, Target(b"new\n", 0o644, 99_999_999_999, os.getegid()))
    assert err.value.step == "install" and "99999999999" in str(err.value)
    assert res.dest.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]  # staged file removed


@pytest.fixture
def background_pids(tmp_path: Path) -> Iterator[Path]:
    """A file the commands under test append their background child's pid to; killed after."""
    pids = tmp_path / "bg.pids"
    yield pids
    for line in pids.read_text().split() if pids.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line), signal.SIGKILL)


@pytest.mark.parametrize("status", [0, 3])
def test_a_background_child_holding_the_output_does_not_block(background_pids: Path,
                                                              status: int) -> None:
    script = f"echo started; sleep 60 & echo $! >> {background_pids}; exit {status}"
    started = time.monotonic()
    result = run_command(["sh", "-c", script], timeout=20)
    elapsed = time.monotonic() - started
    # The command's own status decides; the child still runs (it is not ours to kill).
    assert (result.ok, result.returncode) == (status == 0, status)
    assert result.output == "started"
    assert elapsed < 15, f"waited {elapsed:.1f}s for the background child"
    os.kill(int(background_pids.read_text().split()[0]), 0)  # still alive


def test_output_is_kept_and_timeouts_still_kill(tmp_path: Path) -> None:
    result = run_command(["sh", "-c", "echo partial; exec sleep 30"], timeout=0.5)
    assert result.returncode is None and not result.ok
    assert "timed out" in result.output and "partial" in result.output
    loud = run_command(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo end"
                        "; exit 1"], timeout=20)
    assert loud.returncode == 1 and loud.output.endswith("end") and len(loud.output) < 5000


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_staged_files_of_dead_pids_are_removed(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getppid()
    keep = [
        f".app.conf.{live}.0.confsync",  # a live writer
        f".app.conf.{os.getpid()}.3.confsync",  # ours
        f".app.conf.{dead}.0.confsync.bak",  # not exactly our pattern
        f".app.conf.{dead}.x.confsync",
        f"app.conf.{dead}.0.confsync",
        f".other.conf.{dead}.0.confsync",  # beside a file we do not manage
        "app.conf",
    ]
    stale = [f".app.conf.{dead}.0.confsync", f".app.conf.{dead}.17.confsync"]
    for name in keep + stale:
        (tmp_path / name).write_text("x")
    (tmp_path / f".app.conf.{dead}.9.confsync").mkdir()  # not a regular file: left alone
    removed = remove_stale_staged([tmp_path / "app.conf", tmp_path / "missing-dir" / "x"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*keep, f".app.conf.{dead}.9.confsync"])


@pytest.fixture
def full_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$TMPDIR on a tmpfs of 64 KiB that fills up after confsync started (tempfile tested and
    cached the directory while it still had room)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmp"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(mount))
        with contextlib.suppress(OSError), (mount / "fill").open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_check_that_prints_passes_while_tmp_is_full(tmp_path: Path, full_tmpdir: Path) -> None:
    """Command output used to go to a file in $TMPDIR: once /tmp filled up, every write of a
    check failed, and a check that minds its writes (set -e, Python's print at exit) failed a
    valid file, stalling the resource until /tmp was cleaned up. Its reason was lost too."""
    ok = resource(tmp_path, check_cmd=("sh", "-c", 'set -e; echo "checking $0"; test -s "$0"',
                                       "{{src}}"))
    install(ok, Target(b"new\n", 0o644, os.geteuid(), os.getegid()))
    assert ok.dest.read_bytes() == b"new\n"
    result = run_command(["sh", "-c", "echo 'line 3: unknown keyword' >&2; exit 1"], 5)
    assert not result.ok and result.output == "line 3: unknown keyword"


def test_a_background_child_printing_without_end_is_capped(background_pids: Path) -> None:
    """The output file is memory: a child left holding it and printing (a reload's daemon
    logging to stdout, `yes`) grew it without bound for as long as it ran. Past the cap (16 MiB)
    its writes fail, and the command's result says the output was cut."""
    cap = 16 * 1024 * 1024
    result = run_command(["sh", "-c", f"yes & echo $! >> {background_pids}; exit 0"], 20)
    assert result.ok
    out = Path(f"/proc/{background_pids.read_text().split()[0]}/fd/1")

    def size() -> int | None:
        try:
            return out.stat().st_size
        except FileNotFoundError:  # it exited: its writes were refused
            return None

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (size() or 0) <= cap and size() is not None:
        time.sleep(0.01)
    assert (size() or 0) <= cap
    loud = run_command(["yes"], timeout=0.5)
    assert loud.output.endswith("(output past 16 MiB refused)"), loud.output[-200:]


def test_a_staged_file_a_predecessor_with_our_pid_left_is_removed(tmp_path: Path) -> None:
    """A container's PID 1 (or any pid a restart hands out again) killed between staging and
    renaming left `.<dest>.<pid>.<n>.confsync`; the next confsync had the same pid and kept
    it for good, taking it for its own: one more full copy of the config per such kill. One
    written before this process started is a predecessor's; one written since is kept."""
    before = tmp_path / f".app.conf.{os.getpid()}.0.confsync"
    since = tmp_path / f".app.conf.{os.getpid()}.1.confsync"
    before.write_text("x")
    since.write_text("x")
    an_hour_ago = time.time() - 3600
    os.utime(before, (an_hour_ago, an_hour_ago))
    removed = remove_stale_staged([tmp_path / "app.conf"])
    assert removed == [before]
    assert since.exists() and not before.exists()
