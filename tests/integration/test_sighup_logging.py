"""`log_level` and `log_format` follow a SIGHUP, as the rest of the main config does."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for


def _config(path: Path, cd: Path, data: Path, level: str, fmt: str) -> None:
    path.write_text(f'confdir = "{cd}"\nbackend = "file"\nlog_level = "{level}"\n'
                    f'log_format = "{fmt}"\n[file]\npaths = ["{data}"]\n'
                    f'[watch]\nwait_min = "0s"\n')


def test_a_sighup_applies_log_level_and_format(tmp_path: Path) -> None:
    """They were read at the start only: a SIGHUP after setting `log_format = "json"` left
    the lines text (a collector parsing JSON got none of them) and a new level was ignored,
    while every other edit of the file took. Now they follow, through the same writer
    thread: each line once, none lost."""
    data, cd, config = tmp_path / "data.yaml", tmp_path / "cd", tmp_path / "confsync.toml"
    data.write_text("app:\n  v: one\n")
    write_resource(cd, "app", "{{ getv('/app/v') }}\n", f'dest = "{tmp_path / "out"}"\n'
                   f'keys = ["/app"]')
    _config(config, cd, data, "info", "text")
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n", 20, what="first render")
        _config(config, cd, data, "debug", "json")
        w.signal(signal.SIGHUP)
        w.wait_log('"message": "configuration reloaded: 1 resources"')
        start = w.output()
        data.write_text("app:\n  v: two\n")
        wait_for(lambda: read(tmp_path / "out") == "two\n", 10, what="a data change")
        w.wait_log('"message": "resource app: wrote')
        _config(config, cd, data, "warning", "json")
        w.signal(signal.SIGHUP)
        wait_for(lambda: '"level": "debug"' in w.output()[len(start):], 10,
                 what=f"a debug line at level debug\n{w.output()[-2000:]}")
        w.wait_log("SIGHUP: reloading configuration", count=2)
        wait_for(lambda: w.output().endswith("\n"), 5)
        quiet = len(w.output())
        data.write_text("app:\n  v: three\n")
        wait_for(lambda: read(tmp_path / "out") == "three\n", 10, what="a change at warning")
    finally:
        code = w.stop()
    assert code == 0, w.output()[-2000:]
    after = w.output()[len(start):]
    lines = [json.loads(line) for line in after.splitlines()]  # every line JSON since
    # (the second reload, to warning, is not said)
    assert w.output().count("configuration reloaded: 1 resources") == 1, w.output()
    assert not any("three" in line["message"] for line in lines), after  # an INFO line
    assert "wrote" not in w.output()[quiet:], w.output()[quiet:]
