"""A conf.d resource whose template file is not there yet (a deploy writing conf.d/ before
templates/, a config-management run half done).

It was left out of the running set at start, said in /ready's `config_errors` with /ready 200,
and nothing tried it again: its file was never written until someone sent SIGHUP. Now it runs
with the others, fails at its render saying the file is not there, and the retry renders it
once the file appears, with `[watch] confdir` on or off. Until then it is in /ready's
`config_errors` and counted by `confsync_config_errors`, reported, not failing: /ready 200, as
for a template with a syntax error, since a typo in `src` rolled out to every instance must
not take them all out of service (it made /ready 503 on every node for good). Real etcd, the
real `confsync` process.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import config_errors_gauge, probe

TEMPLATE = "value={{ getv('/k/v') }}\n"


def _confdir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """conf.d with `good` (template there) and `late` (its template not written yet)."""
    confdir = tmp_path / "cd"
    good, late = tmp_path / "good.conf", tmp_path / "late.conf"
    write_resource(confdir, "good", TEMPLATE, f'dest = "{good}"\nkeys = ["/k"]\n')
    (confdir / "conf.d" / "late.toml").write_text(
        f'[template]\nsrc = "late.tmpl"\ndest = "{late}"\nkeys = ["/k"]\n')
    return confdir, good, late


@pytest.mark.parametrize("watch_confdir", [False, True], ids=["sighup-only", "watch-confdir"])
def test_watch_renders_a_template_that_appears_after_start_without_a_sighup(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess],
        watch_confdir: bool) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    confdir, good, late = _confdir(tmp_path)
    config = tmp_path / "confsync.toml"
    config.write_text(f"[watch]\nconfdir = {str(watch_confdir).lower()}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--config", str(config), "--confdir", str(confdir), "--endpoints",
                     etcd.endpoint, "--prefix", prefix, "--wait-min", "0",
                     "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(good) == "value=1\n", 20, what="the resource whose template is there")

    def reported_not_failing() -> bool:
        status, body = probe(base, "/ready")
        return (status == 200 and "failing" not in body
                and any("late.toml" in e and "late.tmpl does not exist" in e
                        for e in body.get("config_errors", [])))

    wait_for(reported_not_failing, 20,
             what=f"/ready 200 with late in config_errors\n{w.output()[-2000:]}")
    assert config_errors_gauge(base) == 1
    assert probe(base, "/health")[0] == 200 and not late.exists()

    (confdir / "templates" / "late.tmpl").write_text(TEMPLATE)
    # The retry's backoff is capped at 30 s: no SIGHUP is sent.
    wait_for(lambda: read(late) == "value=1\n", 45,
             what=f"the late template rendered\n{w.output()[-2000:]}")
    wait_for(lambda: probe(base, "/ready")[0] == 200, 10, what="ready")
    assert "config_errors" not in probe(base, "/ready")[1] and config_errors_gauge(base) == 0
    client(etcd.endpoint).put(prefix + "/k/v", "2")  # a resource of the set like any other
    wait_for(lambda: read(late) == "value=2\n" and read(good) == "value=2\n", 20,
             what="both follow etcd")
    assert w.proc.poll() is None


def test_once_fails_only_that_resource_saying_the_template_is_not_there(
        etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    confdir, good, late = _confdir(tmp_path)
    done = confsync("once", "--confdir", str(confdir), "--endpoints", etcd.endpoint,
                    "--prefix", prefix)
    # A resource failed (1, as for an owner not known yet): not 2, a configuration that can
    # never work, which the units never restart.
    assert done.returncode == 1, done.stderr
    assert "resource late: render failed: template file" in done.stderr, done.stderr
    assert read(good) == "value=1\n" and not late.exists()


def test_a_sighup_while_a_template_is_deleted_keeps_the_running_set_and_is_tried_again(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A deploy that deletes a template and writes it anew (or a SIGHUP sent half way): the
    reload was refused for good, and the edits that came with it waited for another SIGHUP.
    The running set stays (its templates as loaded) and the reload is tried again."""
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    confdir = tmp_path / "cd"
    app, other = tmp_path / "app.conf", tmp_path / "other.conf"
    write_resource(confdir, "app", TEMPLATE, f'dest = "{app}"\nkeys = ["/k"]\n')
    write_resource(confdir, "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
    w = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                     prefix, "--wait-min", "0", log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(app) == "value=1\n" and read(other) == "value=1\n", 20,
             what="both written")
    (confdir / "templates" / "app.tmpl").unlink()
    (confdir / "templates" / "other.tmpl").write_text("v2={{ getv('/k/v') }}\n")
    w.signal(signal.SIGHUP)
    w.wait_log("app.tmpl does not exist (yet?) (the running definition renders); the reload is "
               "tried again", timeout=20)
    client(etcd.endpoint).put(prefix + "/k/v", "2")  # the running set goes on meanwhile
    wait_for(lambda: read(app) == "value=2\n" and read(other) == "value=2\n", 20,
             what="the running set following etcd")
    (confdir / "templates" / "app.tmpl").write_text(TEMPLATE)
    wait_for(lambda: read(other) == "v2=2\n", 45,
             what=f"the reload taken once the template is back\n{w.output()[-2000:]}")
    assert read(app) == "value=2\n" and w.proc.poll() is None
