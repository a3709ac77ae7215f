"""A registration without `address` follows this host's address: checks derived again, the
follower thread, and the loop's handling of a change (fakes; the real thing is in
tests/integration/test_register_address.py)."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from confsync.register import address as address_module
from confsync.register.address import (
    AddressChanged,
    AddressFollower,
    is_loopback,
    warn_if_loopback,
)
from confsync.register.checks import Result
from confsync.register.config import Registration, parse_registration
from confsync.register.metrics import RegisterMetrics
from confsync.register.run import RegisterLoop
from confsync.register.state import ABSENT
from confsync.settings import Settings

CHECKS = [{"type": "http", "path": "/healthz"},
          {"type": "http", "url": "http://127.0.0.1:8080/ready"},
          {"type": "tcp"},
          {"type": "tcp", "port": 9000},
          {"type": "tcp", "host": "127.0.0.1"},
          {"type": "exec", "command": "true"}]


def _parse(name: str, data: dict[str, Any], detected: str = "10.0.0.5") -> Registration:
    return parse_registration(Path(f"/etc/confsync/register.d/{name}.toml"), data, "/p",
                              "node1", lambda: detected)


def test_derived_checks_follow_the_address_and_written_ones_stay() -> None:
    r = _parse("web", {"service": "web", "port": 8080, "check": CHECKS})
    assert r.address_detected
    moved = r.with_address("10.0.0.9")
    assert moved.address == "10.0.0.9" and moved.key == r.key and moved.port == 8080
    assert [c.target for c in moved.checks] == [
        "http://10.0.0.9:8080/healthz", "http://127.0.0.1:8080/ready", "10.0.0.9:8080",
        "10.0.0.9:9000", "127.0.0.1:8080", "true"]
    assert moved.value("ready", "node1")["address"] == "10.0.0.9"
    v6 = moved.with_address("2001:db8::7")
    assert [c.target for c in v6.checks][:3] == [
        "http://[2001:db8::7]:8080/healthz", "http://127.0.0.1:8080/ready", "2001:db8::7:8080"]
    assert v6.with_address("10.0.0.5").checks == r.checks  # and back, exactly


def test_a_written_address_is_not_detected() -> None:
    r = _parse("web", {"service": "web", "port": 8080, "address": "10.1.1.1"})
    assert not r.address_detected


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.0.1") and is_loopback("::1")
    assert not is_loopback("10.0.0.5") and not is_loopback("2001:db8::1")
    assert not is_loopback("not an address")


def test_a_loopback_address_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        warn_if_loopback("10.0.0.5", ["/k"])
        assert caplog.records == []
        warn_if_loopback("127.0.0.1", ["/p/services/web/instances/a"])
    (record,) = caplog.records
    assert "127.0.0.1" in record.message and "loopback" in record.message
    assert "/p/services/web/instances/a" in record.message and "`address`" in record.message


def test_the_follower_reports_changes_only_and_keeps_the_address_while_detection_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    answers: list[Any] = ["10.0.0.5", OSError("no route"), OSError("no route"),
                          OSError("no route"), "10.0.0.9", "10.0.0.9"]

    def detect() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    reported: list[AddressChanged] = []
    follower = AddressFollower(detect, "10.0.0.5", reported.append, interval=10.0)
    with caplog.at_level(logging.INFO, logger="confsync.register"):
        delays = [follower.check() for _ in range(6)]
    assert reported == [AddressChanged("10.0.0.5", "10.0.0.9")]
    assert follower.current == "10.0.0.9"
    assert delays[0] == delays[4] == delays[5] == 10.0
    assert all(0.5 <= d <= 10.0 for d in delays[1:4]), "a failure is retried sooner"
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["register: cannot tell this host's address now (no route); keeping "
                        "10.0.0.5"], "logged once, not at every failure"
    assert any("can be told again: 10.0.0.9" in r.message for r in caplog.records)


def test_the_follower_thread_polls_and_posts_to_the_queue() -> None:
    address = ["10.0.0.5"]
    reported: list[AddressChanged] = []
    changed = threading.Event()

    def report(change: AddressChanged) -> None:
        reported.append(change)
        changed.set()

    follower = AddressFollower(lambda: address[0], "10.0.0.5", report, interval=0.02,
                               netlink=False).start()
    try:
        time.sleep(0.1)
        assert reported == []
        address[0] = "10.0.0.9"
        assert changed.wait(5)
    finally:
        follower.stop()
    assert reported == [AddressChanged("10.0.0.5", "10.0.0.9")]


def test_a_storm_of_address_events_starts_a_detection_at_most_once_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kubernetes node adds an address per pod: events must not become a DNS query each."""
    events, kernel = socket.socketpair()
    events.setblocking(False)  # as the netlink socket is
    monkeypatch.setattr(address_module, "_address_events", lambda: events)
    detections: list[float] = []

    def detect() -> str:
        detections.append(time.monotonic())
        return "10.0.0.5"

    follower = AddressFollower(detect, "10.0.0.5", lambda change: None, interval=60).start()
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # an event every 20 ms for 2.5 s
            kernel.send(b"x")
            time.sleep(0.02)
    finally:
        follower.stop()
        kernel.close()
    assert 2 <= len(detections) <= 4, detections  # one per second (each ~0.2 s after an event)
    gaps = [b - a for a, b in itertools.pairwise(detections)]
    assert min(gaps) >= 0.95, gaps


class _Registrar:
    connected = True

    def __init__(self) -> None:
        self.wanted: dict[str, dict[str, Any] | None] = {}
        self.reconnects = 0

    def want(self, key: str, value: dict[str, Any] | None) -> None:
        self.wanted[key] = value

    def reconnect(self) -> None:
        self.reconnects += 1


def _loop() -> tuple[RegisterLoop, _Registrar]:
    registrations = [
        _parse("web", {"service": "web", "port": 8080, "check": CHECKS[:3]}),
        _parse("api", {"service": "api", "port": 9090, "check": [{"type": "tcp"}]}),
        _parse("db", {"service": "db", "port": 5432, "address": "10.0.0.5",
                      "check": [{"type": "tcp"}]})]
    loop = RegisterLoop(Settings(), registrations, "node1", RegisterMetrics(registrations),
                        None, None)
    fake = _Registrar()
    loop.registrar = fake  # type: ignore[assignment]
    for name in ("web", "api", "db"):
        state = loop.instances[name]
        for index in range(len(state.checks)):
            state.observe(Result(name, index, True, 0.0, "ok"))
            state.observe(Result(name, index, True, 0.0, "ok"))
    loop._publish()
    loop.instances["api"].maintenance = False
    loop.instances["api"].published = ABSENT  # (as if its check were down: absent stays so)
    loop.instances["api"].checks[0].up = False
    fake.wanted.clear()
    return loop, fake


def test_a_change_moves_detected_registrations_and_republishes_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    loop, fake = _loop()
    web = loop.instances["web"]
    hysteresis = list(web.checks)
    with caplog.at_level(logging.INFO, logger="confsync.register"):
        loop._handle(AddressChanged("10.0.0.5", "10.0.0.9"))
    # The ready one is rewritten now with the new address; the absent one stays absent (its
    # registration moved, so it comes back with the new address); the written one never moves.
    assert fake.wanted == {web.registration.key: {
        "address": "10.0.0.9", "port": 8080, "weight": 100, "state": "ready", "host": "node1"}}
    assert fake.reconnects == 1
    assert loop.instances["api"].registration.address == "10.0.0.9"
    assert loop.instances["api"].published == ABSENT
    assert loop.instances["db"].registration.address == "10.0.0.5"
    # Same checks, same up/down state; the runners probe the new address from the next probe.
    assert web.checks == hysteresis and all(h.up for h in web.checks)
    assert not loop.instances["api"].checks[0].up
    targets = {(r.registration, r.index): r.spec.target for r in loop.runners}
    assert targets == {("web", 0): "http://10.0.0.9:8080/healthz",
                       ("web", 1): "http://127.0.0.1:8080/ready", ("web", 2): "10.0.0.9:8080",
                       ("api", 0): "10.0.0.9:9090", ("db", 0): "10.0.0.5:5432"}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "changed from 10.0.0.5 to 10.0.0.9" in warning.message
    assert "/p/services/web/instances/node1-8080" in warning.message
    assert "/p/services/api/instances/node1-9090" in warning.message
    assert "db" not in warning.message
    loop._publish()  # nothing else to write: the states did not change
    assert list(fake.wanted) == [web.registration.key]


def test_a_change_to_loopback_is_warned_about_and_an_unusable_address_is_not_published(
        caplog: pytest.LogCaptureFixture) -> None:
    loop, fake = _loop()
    with caplog.at_level(logging.WARNING, logger="confsync.register"):
        loop._handle(AddressChanged("10.0.0.5", "10.0.0.9 backup"))  # the template refuses it
        assert loop.instances["web"].registration.address == "10.0.0.5"
        assert fake.wanted == {} and fake.reconnects == 0
        assert "cannot be published" in caplog.records[-1].message
        loop._handle(AddressChanged("10.0.0.5", "127.0.0.1"))
    assert loop.instances["web"].registration.address == "127.0.0.1"
    assert "loopback" in caplog.records[-1].message
    loop._handle(AddressChanged("127.0.0.1", "127.0.0.1"))  # nothing to move: nothing done
    assert fake.reconnects == 1
