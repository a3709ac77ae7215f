"""`confsync check`: a plan that writes nothing, against live data or a fixture (golden files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.cli import REPO, confsync, write_resource


def test_check_against_a_fixture_renders_the_shipped_haproxy_template(tmp_path: Path) -> None:
    dest = tmp_path / "haproxy.cfg"
    confdir = tmp_path / "cd"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "conf.d" / "haproxy.toml").write_text(
        f'[template]\nsrc = "{REPO}/templates/haproxy/templates/haproxy.cfg.tmpl"\n'
        f'dest = "{dest}"\nkeys = ["/services", "/haproxy"]\n')
    result = confsync("check", "--confdir", str(confdir), "--backend", "env",
                      "--data", str(REPO / "templates/haproxy/data/services.yaml"))
    assert result.returncode == 4, result.stderr  # would change
    assert "would change" in result.stdout
    assert "+    server web-1 10.0.0.11:8080 weight 100 check" in result.stdout
    assert "+    server api-2 [2001:db8::22]:9000 weight 100 check disabled" in result.stdout
    assert not dest.exists()


def test_check_reports_failures_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text('{"app": {"port": "eighty"}}')
    write_resource(tmp_path, "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/app"]')
    result = confsync("check", "--confdir", str(tmp_path), "--backend", "env", "--data", str(data))
    assert result.returncode == 1
    assert "app: FAILED" in result.stdout and "key /app/port: expected a port number" in result.stdout
    assert not (tmp_path / "out").exists()


def test_check_names_the_step_once_fails_at_for_an_unknown_owner(tmp_path: Path) -> None:
    """The README's first example, pasted as it is, names a user `app` that does not exist and a
    check command that fails: `check` ran the check first and said "check failed" where `once`
    says "owner failed"; both must name the owner."""
    data = tmp_path / "d.yaml"
    data.write_text("app:\n  v: 1\n")
    write_resource(tmp_path, "app", "v={{ getv('/app/v') }}\n",
                   f'dest = "{tmp_path}/out"\nkeys = ["/app"]\nowner = "cs-nobody-like-this"\n'
                   'check_cmd = "false {{src}}"')
    planned = confsync("check", "--confdir", str(tmp_path), "--backend", "file",
                       "--file", str(data))
    done = confsync("once", "--confdir", str(tmp_path), "--backend", "file", "--file", str(data))
    assert done.returncode == planned.returncode == 1, (done.stderr, planned.stdout)
    said = "resource app: owner failed: no such user 'cs-nobody-like-this'"
    assert said in done.stderr
    assert said in planned.stdout, planned.stdout
    assert not (tmp_path / "out").exists()


def test_a_diff_larger_than_a_pipe_arrives_whole(tmp_path: Path) -> None:
    """One-shot commands leave with os._exit (no interpreter teardown): what they printed must
    still be flushed, the short last line included, well past a pipe's 64 KiB buffer, and the
    exit code kept."""
    data = tmp_path / "d.yaml"
    data.write_text("x: hello\n")
    write_resource(tmp_path, "big", "{% for i in range(20000) %}line {{ i }} {{ getv('/x') }}\n"
                   "{% endfor %}", f'dest = "{tmp_path}/out"\nkeys = ["/x"]')
    write_resource(tmp_path, "small", "{{ getv('/x') }}\n", f'dest = "{tmp_path}/small"\n'
                   'keys = ["/x"]')
    (tmp_path / "small").write_text("hello\n")
    env = {k: v for k, v in os.environ.items()  # block-buffered stdout, as on most machines
           if k != "PYTHONUNBUFFERED" and not k.startswith("CONFSYNC_")}
    result = subprocess.run([sys.executable, "-m", "confsync", "check", "--confdir",
                             str(tmp_path), "--backend", "file", "--file", str(data)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 4, result.stderr
    lines = result.stdout.splitlines()
    assert len(result.stdout) > 256 * 1024
    assert sum(line.startswith("+line ") for line in lines) == 20000
    assert lines[-1] == f"# small: {tmp_path}/small is up to date"
    assert not (tmp_path / "out").exists()
