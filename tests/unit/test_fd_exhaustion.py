"""Out of file descriptors (EMFILE): each step's error names the resource, the step and the
open-file limit, and dest stays as it was."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from confsync.applier import Target, install
from confsync.commands import run_command
from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.ops.http import MetricsServer
from confsync.outcome import FAILED
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Snapshot
from confsync.sync import Syncer


@contextlib.contextmanager
def no_free_descriptor() -> Iterator[int]:
    """This process's soft RLIMIT_NOFILE lowered to its lowest free descriptor, so the next
    open fails with EMFILE; restored after. Yields the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open(os.devnull, os.O_RDONLY)  # the lowest free number
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        yield lowest
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_command_that_cannot_start_names_the_open_file_limit() -> None:
    with no_free_descriptor() as limit:
        result = run_command(["true"], 5)
    assert not result.ok
    assert result.output.startswith("cannot run `true`: Too many open files")
    assert f"open-file limit, RLIMIT_NOFILE, is {limit}" in result.output  # was only strerror


def test_a_stage_without_a_descriptor_names_the_resource_step_and_limit(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old\n")
    res = Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t", dest=dest,
                   keys=("/",), prefix="")
    with no_free_descriptor() as limit, pytest.raises(ResourceError) as raised:
        install(res, Target(b"new\n", 0o644, os.geteuid(), os.getegid()))
    assert (raised.value.resource, raised.value.step) == ("app", "stage")
    assert f"Too many open files (confsync's open-file limit, RLIMIT_NOFILE, is {limit}" in str(
        raised.value)
    assert dest.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]


class _Healthy:
    registry = CollectorRegistry()

    def health(self, max_age: float = 0) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def test_the_metrics_server_out_of_descriptors_waits_instead_of_spinning() -> None:
    server = MetricsServer(_Healthy(), "127.0.0.1:0").start()
    client = socket.socket()
    client.settimeout(5)
    try:
        with no_free_descriptor():
            client.connect(("127.0.0.1", server.port))  # waits in the backlog
            before = time.process_time()
            time.sleep(1.0)
            spent = time.process_time() - before
        assert spent < 0.3, spent  # was ~0.96 s: accept() failed and was retried at once
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.0 200")  # answered once there is one
    finally:
        client.close()
        server.close()


def test_a_dest_that_cannot_be_read_for_want_of_a_descriptor_names_the_limit(
        tmp_path: Path) -> None:
    (tmp_path / "t.tmpl").write_text("port {{ getv('/app/port') }}\n")
    res = Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "app.conf", keys=("/app",), prefix="")
    res.dest.write_bytes(b"port 1\n")
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/app/port": b"8080"}))
    syncer = Syncer(Renderer(tmp_path), mirror)
    with no_free_descriptor() as limit:
        (outcome,) = syncer.apply([res])
    assert outcome.status == FAILED and outcome.error is not None
    # Was "resource app: stage failed: <dest>: Too many open files".
    assert f"{res.dest}: Too many open files (confsync's open-file limit, RLIMIT_NOFILE, is " \
           f"{limit}" in str(outcome.error)
    assert res.dest.read_bytes() == b"port 1\n"
