"""`confsync watch` as an unprivileged user whose dest directory is root's: that resource fails
with a clear error, the others are written, and /ready says which and why."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import WatchProcess, wait_for
from tests.support.etcd_server import free_port
from tests.support.http_probe import ready


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory nobody can read (pytest's tmp_path is root's and 0700)."""
    path = Path(tempfile.mkdtemp(prefix="confsync-unpriv-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_watch_as_nobody_with_a_root_owned_dest_directory_says_why_in_ready(
        world_readable: Path, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as nobody")
    base = world_readable
    (base / "conf.d").mkdir()
    (base / "templates").mkdir()
    (base / "templates" / "t.tmpl").write_text("port {{ getv('/app/port') }}\n")
    (base / "mine").mkdir(mode=0o777)
    (base / "mine").chmod(0o777)
    (base / "roots").mkdir(mode=0o755)
    for name, directory in (("good", "mine"), ("bad", "roots")):
        (base / "conf.d" / f"{name}.toml").write_text(
            f'[template]\nsrc = "t.tmpl"\ndest = "{base / directory / name}.conf"\n'
            f'keys = ["/app"]\n')
    (base / "data.yaml").write_text("app:\n  port: '8080'\n")
    for path in base.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    port = free_port()
    w = WatchProcess("--confdir", str(base), "--backend", "file", "--file",
                     str(base / "data.yaml"), "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log", env={"CONFSYNC_CONFIG": "/dev/null"},
                     wrapper=[setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"])
    watchers.append(w)
    wait_for(lambda: ready(port)[1].get("reasons") == ["failing: bad"],
             what=f"/ready naming bad alone; log:\n{w.output()[-2000:]}")
    body = ready(port)[1]
    # Was the name alone: the reason was only in the log.
    assert body["failing"] == {"bad": f"stage failed: cannot write a staged file in "
                                      f"{base / 'roots'}: Permission denied"}
    assert (base / "mine" / "good.conf").read_text() == "port 8080\n"
    assert os.listdir(base / "roots") == []
    assert w.proc.poll() is None
    assert ("ERROR resource bad: stage failed: cannot write a staged file in "
            f"{base / 'roots'}: Permission denied") in w.output()
