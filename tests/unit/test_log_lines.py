"""Data never forges log lines: a key or value with a line break stays inside its own record."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

from confsync.provenance import show_key
from tests.support.cli import REPO, write_resource

FORGED = "2026-12-06 06:00:00,000 ERROR forged line"


def test_a_hostile_key_and_value_stay_on_one_log_line(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text(f'svc:\n  "x\\n{FORGED}": "80\\nfake"\n')
    write_resource(tmp_path / "cd", "l", "{% for kv in gets('/svc/*') %}{{ kv.value | port }}\n"
                   "{% endfor %}", f'dest = "{tmp_path / "out"}"\nkeys = ["/svc"]')
    done = subprocess.run([sys.executable, "-m", "confsync", "once", "--confdir",
                           str(tmp_path / "cd"), "--backend", "file", "--file", str(data)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert not any(line.startswith(FORGED) for line in lines), done.stderr
    failed = [line for line in lines if "render failed" in line]
    assert len(failed) == 1 and f"/svc/x\\n{FORGED}" in failed[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_show_key_escapes_control_characters_and_keeps_ordinary_keys() -> None:
    assert show_key("/services/web/instances/a-1") == "/services/web/instances/a-1"
    assert show_key("/k/a\nb\x1b[31m") == "/k/a\\nb\\x1b[31m"
    assert show_key("/k/\udcff") == "'/k/\\xff'"  # not UTF-8: its bytes


def test_a_long_key_is_shown_by_its_two_ends_and_its_length() -> None:
    """A key of up to etcd's 1.5 MiB request was repeated whole in every message about it."""
    key = "/services/web/" + "x" * 100_000 + "/tail"
    shown = show_key(key)
    assert len(shown) <= 220
    assert shown.startswith("/services/web/xx") and shown.endswith("xx/tail")
    assert f"({len(key)} characters)" in shown
    assert show_key("/k/" + "a" * 190) == "/k/" + "a" * 190  # up to 200: whole


def test_repeats_lets_a_message_through_once_per_period() -> None:
    from confsync.logs import Repeats

    now = [0.0]
    repeats = Repeats(every=300.0, clock=lambda: now[0])
    assert repeats.due("etcd down")
    assert repeats.due("other reason")
    now[0] = 299.0
    assert not repeats.due("etcd down") and not repeats.due("other reason")
    now[0] = 300.0
    assert repeats.due("etcd down")
    assert not repeats.due("etcd down")
    for i in range(1000):  # texts that change every retry are forgotten, not kept
        now[0] += 1.0
        repeats.due(f"error {i}")
    assert len(repeats._logged) <= 301


class _StalledStream:
    """A stderr whose reader stopped: each write waits until `reading` is set."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.reading.wait()
        self.lines.append(text)

    def flush(self) -> None:
        pass


def test_logging_never_waits_for_a_stalled_stderr_and_counts_what_it_dropped() -> None:
    from confsync.logs import BackgroundStreamHandler, TextFormatter

    class Small(BackgroundStreamHandler):
        QUEUED = 5
        FLUSH_WAIT = 5.0

    stream = _StalledStream()
    handler = Small(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test-stalled-stderr")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for i in range(100):
            logger.warning("line %d", i)
        assert time.monotonic() - started < 2.0  # none waited for the stream
        stream.reading.set()
        handler.flush()
        assert any("log lines dropped: stderr took none for a while" in line
                   for line in stream.lines)
        kept = [line for line in stream.lines if "dropped" not in line]
        assert 1 <= len(kept) <= 6 and kept[-1].startswith("WARNING line ")
        logger.warning("after")
        handler.flush()
        assert stream.lines[-1] == "WARNING after\n"
    finally:
        logger.removeHandler(handler)
        handler.close()
