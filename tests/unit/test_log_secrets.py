"""Secret masking in text and JSON logs: the etcd password never reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.logs import setup_logging
from confsync.settings import EtcdSettings, read_password


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Call `setup_logging` inside the test: capsys swaps sys.stderr only for the call phase."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)


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


def test_text_format_too(json_logs: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    setup_logging("info", "text")
    (tmp_path / "pw").write_text("text-secret-42")
    read_password(EtcdSettings(password_file=tmp_path / "pw"))
    logging.getLogger("confsync.test").warning("auth as user:text-secret-42 failed")
    err = json_logs.readouterr().err
    assert "text-secret-42" not in err and "user:********" in err
