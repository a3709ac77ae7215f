"""The record of servers confsync parked (parked_record.py): written off the caller's thread,
read back only when it is confsync's own and whole, applied only to the worker it names, and
only to servers that are parked still. What a restarted `watch` does with it against a real
HAProxy: tests/integration/test_haproxy_parked.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from confsync.haproxy import parked_record
from confsync.haproxy.config_model import parse
from confsync.haproxy.parked_record import (
    ParkedRecord,
    read_record,
    record_path,
    save,
    still_parked,
)
from confsync.haproxy.runtime import LiveServer, Worker

SOCKET = "/run/haproxy/admin.sock"
WORKER = Worker(4242, 1796666748)
RECORD = ParkedRecord(SOCKET, WORKER, frozenset({"be_web/old", "be_web/gone"}))


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the record's module logged (other threads of the worker may log meanwhile)."""
    return [r.getMessage() for r in caplog.records if r.name == parked_record.log.name]


def _saved(path: Path, record: ParkedRecord | None) -> None:
    save(path, record)
    assert parked_record.flush(5.0)


def test_a_saved_record_reads_back_and_none_removes_it(tmp_path: Path) -> None:
    path = record_path(tmp_path / "haproxy.cfg")
    assert path == tmp_path / ".haproxy.cfg.confsync-parked"
    _saved(path, RECORD)
    assert read_record(path) == RECORD
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # (no temporary file left)
    _saved(path, None)
    assert not path.exists()
    assert read_record(path) is None


def test_only_the_last_of_several_saves_is_what_stays(tmp_path: Path) -> None:
    path = record_path(tmp_path / "haproxy.cfg")
    for count in range(1, 30):
        save(path, ParkedRecord(SOCKET, WORKER, frozenset(f"be_web/s{i}" for i in range(count))))
    assert parked_record.flush(5.0)
    found = read_record(path)
    assert found is not None and len(found.servers) == 29


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[]", b"\x00\xff garbage",
    b'{"format": "confsync-haproxy-parked-0", "admin_socket": "/s", '
    b'"worker": {"pid": 1, "start_time_sec": 2}, "servers": []}',
    b'{"format": "confsync-haproxy-parked-1", "admin_socket": "/s", '
    b'"worker": {"pid": 1}, "servers": ["be/a"]}',
    b'{"format": "confsync-haproxy-parked-1", "admin_socket": "/s", '
    b'"worker": {"pid": true, "start_time_sec": 2}, "servers": ["be/a"]}',
    b'{"format": "confsync-haproxy-parked-1", "admin_socket": "/s", '
    b'"worker": {"pid": 1, "start_time_sec": 2}, "servers": ["be/a;help"]}',
    b'{"format": "confsync-haproxy-parked-1", "admin_socket": "/s", '
    b'"worker": {"pid": 1, "start_time_sec": 2}, "servers": ["no-backend"]}',
], ids=["empty", "cut", "list", "binary", "other-format", "no-start", "bool-pid",
        "command-in-name", "no-slash"])
def test_a_corrupted_record_is_ignored_with_one_line(
        tmp_path: Path, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = record_path(tmp_path / "haproxy.cfg")
    path.write_bytes(raw)
    with caplog.at_level(logging.INFO, logger="confsync.haproxy.parked_record"):
        assert read_record(path) is None
    said = _said(caplog)
    assert len(said) == 1 and "ignored" in said[0]


def test_a_link_or_another_users_file_is_no_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "elsewhere"
    real.write_bytes(RECORD.encode())
    path = record_path(tmp_path / "haproxy.cfg")
    path.symlink_to(real)
    with caplog.at_level(logging.INFO, logger="confsync.haproxy.parked_record"):
        assert read_record(path) is None
    assert len(_said(caplog)) == 1
    if os.geteuid() == 0:  # (only root can give a file to another user)
        path.unlink()
        path.write_bytes(RECORD.encode())
        os.chown(path, 65534, 65534)
        assert read_record(path) is None
        assert "owner uid 65534" in _said(caplog)[-1]


def test_a_record_concerns_only_the_worker_and_socket_it_names() -> None:
    assert RECORD.ignored_because(SOCKET, WORKER) is None
    assert "reloaded or restarted" in str(RECORD.ignored_because(SOCKET, Worker(4243, WORKER.started)))
    # The same pid again, in a worker started later (a restart where pids repeat: a container)
    assert "reloaded or restarted" in str(RECORD.ignored_because(SOCKET, Worker(4242, 1796666999)))
    assert "does not say" in str(RECORD.ignored_because(SOCKET, None))
    assert "another admin socket" in str(RECORD.ignored_because("/run/other.sock", WORKER))


def _live(**servers: bool) -> dict[str, dict[str, LiveServer]]:
    """be_web's servers, each in maintenance or not."""
    return {"be_web": {name: LiveServer("10.0.0.9", 80, 1, maint, False)
                       for name, maint in servers.items()}}


def test_only_recorded_servers_parked_still_and_not_in_the_file_are_taken() -> None:
    new = parse("backend be_web\n    balance roundrobin\n    server a 10.0.0.1:80\n"
                "    server-template slot 1-3 10.0.0.9:80 disabled\n")
    record = ParkedRecord(SOCKET, WORKER, frozenset({
        "be_web/old",  # in maintenance, not in the file: parked still
        "be_web/back",  # set ready by someone since
        "be_web/a",  # etcd wants it back: the pass brings it to the file
        "be_web/slot2",  # a server-template slot of the file
        "be_web/gone",  # deleted since
        "be_other/x",  # a backend of another file, or gone
    }))
    live = _live(old=True, back=False, a=True, slot2=True, operator=True)
    live["be_other"] = {"x": LiveServer("10.0.0.9", 80, 1, True, False)}
    # `operator`: in maintenance, not in the file, not recorded: never taken
    assert still_parked(record, live, new) == {"be_web/old"}
