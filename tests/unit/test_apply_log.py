"""Audit events (one per apply) and secret masking in text and JSON logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.errors import ResourceError
from confsync.logs import ApplyLog, diff_stats, setup_logging
from confsync.resources import Resource
from confsync.settings import EtcdSettings, read_password
from confsync.sync import FAILED, UNCHANGED, UPDATED, Outcome

DIFF = """--- /x/a.conf (current)
+++ /x/a.conf (rendered)
@@ -1,2 +1,3 @@
 keep
-old line
+new line
+another
"""


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Call `setup_logging` inside the test: capsys swaps sys.stderr only for the call phase."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)


def events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_diff_stats() -> None:
    assert diff_stats(DIFF) == (2, 1)
    assert diff_stats("") == (0, 0)


def test_one_event_per_apply(json_logs: pytest.CaptureFixture[str]) -> None:
    a = Resource(name="a", source=Path("/x/a.toml"), src=Path("/x/t"), dest=Path("/x/a.conf"),
                 keys=("/app",), prefix="")
    b = Resource(name="b", source=Path("/x/b.toml"), src=Path("/x/t"), dest=Path("/x/b.conf"),
                 keys=("/other",), prefix="")
    setup_logging("debug", "json")
    log = ApplyLog()
    log.batch_applied(12, ["/app/x", "/other/y"], [
        Outcome(a, UPDATED, diff=DIFF, reload="ran `true` in 3 ms", seconds=0.01),
        Outcome(b, FAILED, ResourceError("b", "check", "`haproxy -c` exited 1: bad line 3")),
        Outcome(a, UNCHANGED),
    ])
    updated, failed, unchanged = events(json_logs)
    assert updated["event"] == "apply" and updated["outcome"] == "updated"
    assert updated["changed_keys"] == ["/app/x"] and updated["revision"] == 12
    assert (updated["lines_added"], updated["lines_removed"]) == (2, 1)
    assert updated["reload"] == "ran `true` in 3 ms"
    assert "new line" not in json.dumps(updated), "rendered content (maybe secrets) never logged"
    assert failed["level"] == "error" and failed["step"] == "check"
    assert "bad line 3" in str(failed["error"])
    assert unchanged["level"] == "debug"


def test_password_is_masked_everywhere(json_logs: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    setup_logging("debug", "json")
    secret = 'pa"ss-w0rd-Z'
    (tmp_path / "pw").write_text(secret + "\n")
    assert read_password(EtcdSettings(password_file=tmp_path / "pw")) == secret
    logger = logging.getLogger("confsync.test")
    logger.error("connect failed with %s", secret, extra={"detail": f"pw={secret}"})
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        logger.exception("oops")
    out = json_logs.readouterr().err
    assert "ss-w0rd" not in out
    assert out.count("********") == 3  # message, extra field, exception text
