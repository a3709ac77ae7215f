"""An in-place upgrade under a running `confsync watch`: pip removes the old package's files,
then writes the new version's, and the daemon is restarted only later (docs/operations.md,
"Upgrading in place"). The running daemon must not need a file from disk meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jinja2
import pytest

from tests.support.cli import REPO
from tests.support.daemon import read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port

pytestmark = pytest.mark.etcd

# Runs confsync from PYTHONPATH alone: a development checkout's editable install would find
# the modules the copy no longer has in the checkout instead.
BOOTSTRAP = ("import sys\n"
             "sys.meta_path[:] = [f for f in sys.meta_path\n"
             "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
             "sys.argv[0] = 'confsync'\n"
             "from confsync.cli import entry\n"
             "entry()\n")


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return answer.status, dict(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))
    except OSError:
        return 0, {}


def resource(confdir: Path, name: str, template: str, body: str) -> None:
    (confdir / "templates" / f"{name}.tmpl").write_text(template)
    (confdir / "conf.d" / f"{name}.toml").write_text(f'[template]\nsrc = "{name}.tmpl"\n{body}')


def test_watch_survives_its_package_being_replaced(etcd: EtcdMember, prefix: str,
                                                   tmp_path: Path) -> None:
    site = tmp_path / "site"
    for package in (REPO / "confsync", Path(jinja2.__file__).parent):
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    confdir, out = tmp_path / "confdir", tmp_path / "out"
    for directory in (confdir / "conf.d", confdir / "templates", out):
        directory.mkdir(parents=True)
    resource(confdir, "app", '{% for kv in gets("/app/*") %}{{ kv.key | base }} {{ kv.value }}\n'
             '{% endfor %}', f'dest = "{out}/app.conf"\nkeys = ["/app"]\nmin_keys = 0\n')
    kv = client(etcd.endpoint)
    kv.put(f"{prefix}/app/a", "1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    log = tmp_path / "watch.log"
    with log.open("ab") as sink:
        # cwd: not the checkout, whose confsync/ `-c` would put first on sys.path
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, "watch", "--confdir", str(confdir),
             "--endpoints", etcd.endpoint, "--prefix", prefix, "--wait-min", "20ms",
             "--metrics-address", f"127.0.0.1:{port}"],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(lambda: get(port, "/ready")[0] == 200, timeout=20, what="/ready 200")

        # pip's first half: the old files are gone (confsync's and a dependency's)
        shutil.rmtree(site / "confsync")
        shutil.rmtree(site / "jinja2")

        # a failing render is reported with its own reason (Jinja2 formats it lazily)
        kv.put(f"{prefix}/app/b", "2\nevil")
        wait_for(lambda: "render failed" in read(log), what="the render failure")
        assert "line break" in read(log)
        assert get(port, "/ready")[0] == 503
        kv.put(f"{prefix}/app/b", "2")
        wait_for(lambda: read(out / "app.conf") == "a 1\nb 2\n", what="app.conf")

        # a template syntax error refuses the SIGHUP for that reason
        resource(confdir, "pool", "{% if %}\n", f'dest = "{out}/pool.conf"\nkeys = ["/pool"]\n'
                 'min_keys = 0\nreload_cmd = "true"\n[haproxy]\nreload_strategy = "reload"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "template syntax error" in read(log), what="the refused SIGHUP")

        # pip's second half: the new version's files, none of which the old code can use
        for package in (REPO / "confsync", Path(jinja2.__file__).parent):
            for source in package.rglob("*.py"):
                new = site / package.name / source.relative_to(package)
                new.parent.mkdir(parents=True, exist_ok=True)
                new.write_text("raise ImportError('a file of the next version')\n")

        # the first [haproxy] resource arrives by SIGHUP: its plugin was loaded at start
        (confdir / "templates" / "pool.tmpl").write_text(
            '{% for kv in gets("/pool/*") %}server {{ kv.key | base }}\n{% endfor %}')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded: 2 resources" in read(log), what="the SIGHUP")
        kv.put(f"{prefix}/pool/s1", "x")
        wait_for(lambda: read(out / "pool.conf") == "server s1\n", what="pool.conf")
        wait_for(lambda: get(port, "/ready")[0] == 200, what="/ready 200")
        assert get(port, "/health")[0] == 200
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        kv.delete_prefix(prefix)
    text = read(log)
    assert code == 0, text
    for sign in ("Traceback", "ModuleNotFoundError", "ImportError", "next version"):
        assert sign not in text, text


def test_a_daemon_started_on_an_incomplete_package_says_so_and_exits(tmp_path: Path) -> None:
    """Started mid-upgrade (a module it would need later is missing): exit 1 at once, for the
    service manager to start it again, rather than failing the first SIGHUP days later."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "confsync", site / "confsync", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(site / "confsync" / "haproxy")
    (tmp_path / "conf.d").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP, "watch", "--confdir", str(tmp_path),
                           "--backend", "env"], capture_output=True, text=True, timeout=30,
                          env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "start-up: No module named 'confsync.haproxy'" in done.stderr
    assert "Traceback" not in done.stderr
