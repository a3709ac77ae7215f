"""A dest someone else changes (a package upgrade's own file, a hand edit, a deletion) is put
back within about a heartbeat, with no `[watch] interval` and no data change; a change that
renders equal writes and reloads nothing; two writers do not make a reload loop."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for


class Stack:
    def __init__(self, base: Path, *watch_args: str) -> None:
        self.base = base
        self.data = base / "data.yaml"
        self.dest = base / "out.conf"
        self.reloads = base / "reloads"
        self.data.write_text("app:\n  port: 8080\n")
        write_resource(base / "cd", "app", "port {{ getv('/app/port') | port }}\n",
                       f'dest = "{self.dest}"\nkeys = ["/app"]\n'
                       f'reload_cmd = ["sh", "-c", "echo r >> {self.reloads}"]')
        self.watch = WatchProcess("--confdir", str(base / "cd"), "--backend", "file",
                                  "--file", str(self.data), "--wait-min", "0", *watch_args,
                                  log=base / "log")

    def reload_count(self) -> int:
        return read(self.reloads).count("r") if self.reloads.exists() else 0

    def replace_dest(self, text: str) -> None:
        """As dpkg or an editor does: a new file renamed over the dest."""
        staged = self.dest.with_name("out.conf.dpkg-new")
        staged.write_text(text)
        os.replace(staged, self.dest)

    @contextlib.contextmanager
    def other_writer(self, seconds: float) -> Iterator[threading.Thread]:
        """Another writer putting its own file back every 100 ms, for at most `seconds` and
        no longer than the block."""
        done = threading.Event()

        def write() -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not done.is_set():
                self.replace_dest("port 81  # the other writer's\n")
                time.sleep(0.1)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            yield writer
        finally:
            done.set()
            writer.join()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        wait_for(lambda: read(s.dest) == "port 8080\n", what="first render")
        wait_for(lambda: s.reload_count() == 1, what="first reload")
        yield s
    finally:
        s.watch.stop()


def test_a_replaced_dest_is_rewritten_and_reloaded_without_an_interval(stack: Stack) -> None:
    stack.replace_dest("port 80  # the package's default\n")
    started = time.monotonic()
    wait_for(lambda: read(stack.dest) == "port 8080\n", timeout=5, what="the dest put back")
    took = time.monotonic() - started
    wait_for(lambda: stack.reload_count() == 2, timeout=5, what="a reload of the repaired file")
    stack.watch.wait_log("edited outside confsync", timeout=5)
    assert took < 3.0, f"repaired after {took:.1f}s"


def test_a_deleted_dest_is_written_again(stack: Stack) -> None:
    stack.dest.unlink()
    wait_for(lambda: read(stack.dest) == "port 8080\n", timeout=5, what="the dest written again")
    wait_for(lambda: stack.reload_count() == 2, timeout=5, what="a reload")


def test_a_touch_or_chmod_the_resource_does_not_set_writes_and_reloads_nothing(
        stack: Stack) -> None:
    inode = stack.dest.stat().st_ino
    os.utime(stack.dest)
    os.chmod(stack.dest, 0o640)
    stack.watch.wait_log("dest changed on disk; rendering again", timeout=5)
    time.sleep(1.5)  # a heartbeat and more: nothing more may happen
    assert stack.dest.stat().st_ino == inode and stack.reload_count() == 1
    assert stack.dest.stat().st_mode & 0o777 == 0o640
    assert "edited outside confsync" not in stack.watch.output()


def test_two_writers_do_not_make_a_reload_loop(stack: Stack) -> None:
    """Another writer puts its file back every 100 ms for 6 s: repairs follow a doubling gap
    (at about 0, 1, 3 s), not one per heartbeat, and the last word is etcd's once it stops."""
    with stack.other_writer(6.0) as writer:
        writer.join(timeout=10)
    repairs = stack.reload_count() - 1
    assert 2 <= repairs <= 4, f"{repairs} reloads for a 6 s fight"
    stack.watch.wait_log("keeps being changed by someone else", timeout=1)
    # The fight is over: the next allowed repair (within the 4 s gap) puts etcd's file back.
    wait_for(lambda: read(stack.dest) == "port 8080\n", timeout=8, what="the last repair")


def test_ready_says_so_while_another_writers_file_waits_for_its_repair(tmp_path: Path) -> None:
    """Between spaced repairs the dest holds the other writer's file, which the service may
    be running: /ready used to answer 200 throughout. It answers 503 with the reason until
    the repair puts etcd's file back, and a touch (same bytes) is not reported."""
    from tests.support.etcd_server import free_port
    from tests.support.http_probe import probe

    port = free_port()
    s = Stack(tmp_path, "--metrics-address", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: probe(base, "/ready")[0] == 200, what="ready")
        held: list[dict[str, object]] = []

        def not_ready() -> bool:
            status, body = probe(base, "/ready")
            if status == 503:
                held.append(body)
            return status == 503

        with s.other_writer(8.0):
            # Repairs at about 0 and 1 s, then one waits 2 s: /ready tells meanwhile.
            wait_for(not_ready, timeout=6, what="503 while held")
        reasons = held[0]["reasons"]
        assert isinstance(reasons, list)
        assert any("changed by someone else, repair waiting: app" in r for r in reasons), held
        wait_for(lambda: read(s.dest) == "port 8080\n", timeout=5, what="the spaced repair")
        wait_for(lambda: probe(base, "/ready")[0] == 200, timeout=3, what="200 after it")
        # Same bytes written anew (a config-management run): nothing to report or repair.
        s.replace_dest("port 8080\n")
        time.sleep(1.5)
        assert probe(base, "/ready")[0] == 200
    finally:
        s.watch.stop()
