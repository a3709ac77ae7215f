"""Descriptors numbered past 1024, which the daemons get once they raise their open-file limit
(fdlimit): select() refuses them (ValueError), so register's waits must not use it."""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from confsync.register import address as address_module
from confsync.register.address import AddressFollower
from confsync.register.run import _watch_child

PAST = 1030


@contextlib.contextmanager
def descriptors_past_1024() -> Iterator[None]:
    """Hold enough descriptors that the next one opened is numbered past PAST."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < PAST + 100:
        pytest.skip(f"the hard open-file limit ({hard}) is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, PAST + 100), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < PAST:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_exec_childs_exit_is_seen_through_a_high_pidfd() -> None:
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    with descriptors_past_1024():
        child = subprocess.Popen(["sleep", "0.2"])
        try:
            _watch_child(child.pid, events)  # was ValueError: filedescriptor out of range
        finally:
            child.wait()
    assert events.get(timeout=1) == ("child",)


def test_address_events_on_a_high_socket_start_a_detection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    detected = threading.Event()

    def detect() -> str:
        detected.set()
        return "10.0.0.5"

    with descriptors_past_1024():
        events, kernel = socket.socketpair()
    events.setblocking(False)
    assert events.fileno() > PAST
    monkeypatch.setattr(address_module, "_address_events", lambda: events)
    follower = AddressFollower(detect, "10.0.0.5", lambda change: None, interval=60).start()
    try:
        kernel.send(b"x")
        assert detected.wait(3)  # the thread died in select() before: no detection for 60 s
    finally:
        follower.stop()
        kernel.close()
