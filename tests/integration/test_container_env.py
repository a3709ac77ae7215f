"""The container path: `confsync once` configured only by CONFSYNC_* variables, as an
unprivileged user, in an environment with nothing else set; and a fast exit 3 when etcd is not
answering (a frozen etcd accepts TCP connections and then says nothing: the worst case).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import etcd_client
from tests.support.etcd_server import EtcdMember, free_port

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]


def _as_nobody() -> list[str]:
    """Run as nobody: setpriv (util-linux) drops uid, gids and every capability."""
    if os.geteuid() != 0:
        return []  # already unprivileged
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def run_clean(env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Nothing inherited but PATH: the environment a container starts with."""
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # an empty config: the host's /etc/confsync/confsync.toml, if any, must not count
            "CONFSYNC_CONFIG": "/dev/null"}
    start = time.monotonic()
    done = subprocess.run([*_as_nobody(), sys.executable, "-m", "confsync", "once"],
                          env={**base, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    return done, time.monotonic() - start


@pytest.fixture
def workdir() -> Iterator[Path]:
    """World-readable (pytest's tmp_path is 0700 and root's): nobody must read the confdir."""
    path = Path(tempfile.mkdtemp(prefix="confsync-container-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _confdir(workdir: Path, dest_dir: Path) -> Path:
    confdir = workdir / "etc-confsync"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "app.tmpl").write_text(
        "listen {{ getv('/listen') }}\nworkers {{ getv('/workers', '2') }}\n")
    (confdir / "conf.d" / "app.toml").write_text(
        f'[template]\nsrc = "app.tmpl"\ndest = "{dest_dir / "app.conf"}"\n'
        f'keys = ["/listen", "/workers"]\nmode = "0640"\n')
    for path in [confdir, *confdir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return confdir


def test_once_from_environment_as_nobody(etcd: EtcdMember, workdir: Path) -> None:
    prefix = f"/container-{uuid.uuid4().hex[:8]}"
    client = etcd_client.client(etcd.endpoint)
    client.put(prefix + "/listen", "0.0.0.0:8080")
    dest_dir = workdir / "out"
    dest_dir.mkdir()
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() == 0:
        os.chown(dest_dir, nobody.pw_uid, nobody.pw_gid)
    env = {"CONFSYNC_BACKEND": "etcd", "CONFSYNC_CONFDIR": str(_confdir(workdir, dest_dir)),
           "CONFSYNC_ETCD_ENDPOINTS": etcd.endpoint, "CONFSYNC_PREFIX": prefix,
           "CONFSYNC_ETCD_TIMEOUT": "5s", "CONFSYNC_LOG_FORMAT": "json"}
    done, _ = run_clean(env, workdir)
    assert done.returncode == 0, done.stderr
    out = dest_dir / "app.conf"
    assert out.read_text() == "listen 0.0.0.0:8080\nworkers 2\n"
    st = out.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o640, nobody.pw_uid if os.geteuid() == 0
                                               else os.geteuid())
    assert '"outcome": "updated"' in done.stderr

    if os.geteuid() == 0:  # it really is unprivileged: a root-owned directory is off limits
        locked = workdir / "locked"
        locked.mkdir(mode=0o755)
        (workdir / "etc-confsync" / "conf.d" / "app.toml").write_text(
            f'[template]\nsrc = "app.tmpl"\ndest = "{locked / "app.conf"}"\n'
            f'keys = ["/listen"]\n')
        done, _ = run_clean(env, workdir)
        assert done.returncode == 1 and "Permission denied" in done.stderr, done.stderr


def test_unreachable_etcd_exits_3_after_its_timeout(etcd_private: EtcdMember,
                                                    workdir: Path) -> None:
    dest_dir = workdir / "out"
    dest_dir.mkdir(mode=0o777)
    dest_dir.chmod(0o777)
    env = {"CONFSYNC_CONFDIR": str(_confdir(workdir, dest_dir)),
           "CONFSYNC_ETCD_TIMEOUT": "1s"}
    # nothing listening: refused at once
    done, refused = run_clean({**env, "CONFSYNC_ETCD_ENDPOINTS":
                               f"http://127.0.0.1:{free_port()}"}, workdir)
    assert done.returncode == 3, done.stderr
    assert "store unavailable" in done.stderr
    assert refused < 5
    # a frozen etcd: the connection opens, nothing answers; the timeout is what ends it
    etcd_private.freeze()
    try:
        done, frozen = run_clean({**env, "CONFSYNC_ETCD_ENDPOINTS": etcd_private.endpoint},
                                 workdir)
    finally:
        etcd_private.thaw()
    assert done.returncode == 3, done.stderr
    assert 1.0 <= frozen < 3.5, f"took {frozen:.2f}s with a 1s timeout"
    print(f"\nexit 3: refused in {refused:.2f}s, frozen etcd in {frozen:.2f}s (timeout 1s)")
    assert not (dest_dir / "app.conf").exists()
