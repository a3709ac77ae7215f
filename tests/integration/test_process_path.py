"""confsync under the bare environment cron and containers give (PATH=/usr/bin:/bin, no HOME):
a command PATH does not reach says so, and where the program is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO, write_resource

MINIMAL = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(REPO),
           "PYTHONDONTWRITEBYTECODE": "1", "CONFSYNC_CONFIG": "/dev/null"}


def test_a_check_cmd_outside_a_minimal_path_names_the_path_and_the_program(
        haproxy_binary: str, tmp_path: Path) -> None:
    if os.path.dirname(haproxy_binary) not in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        pytest.skip(f"haproxy is at {haproxy_binary}, not in an sbin")
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: '8080'\n")
    dest = tmp_path / "haproxy.cfg"
    write_resource(tmp_path, "app", "global\n# {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\ncheck_cmd = "haproxy -c -q -f {{{{src}}}}"')
    done = subprocess.run([sys.executable, "-m", "confsync", "once", "--confdir", str(tmp_path),
                           "--backend", "file", "--file", str(data)],
                          env=MINIMAL, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    # Was "cannot run `haproxy`: No such file or directory".
    assert ("resource app: check failed: cannot run `haproxy`: not found in PATH (/usr/bin:/bin);"
            f" {haproxy_binary} exists: write that path in the command") in done.stderr, done.stderr
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.d", "data.yaml", "templates"]
