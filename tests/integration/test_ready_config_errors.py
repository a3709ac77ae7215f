"""conf.d files left out of the running set are said in /ready and a gauge, not only in one
log line at start: a resource file with a bad value at start (or a reload refused) ran
for months unnoticed behind a green /ready. Reported, not failing: the loaded resources are
current, and one bad file rolled out to every instance must not take them all out of service.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import config_errors_gauge, probe

TEMPLATE = "value={{ getv('/k/v') }}\n"


def test_files_left_out_and_a_refused_reload_are_in_ready_until_mended(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    confdir = tmp_path / "cd"
    good, late = tmp_path / "good.conf", tmp_path / "late.conf"
    write_resource(confdir, "good", TEMPLATE, f'dest = "{good}"\nkeys = ["/k"]\n')
    write_resource(confdir, "late", TEMPLATE, f'dest = "{late}"\nkeys = ["/k"]\nmode = "999"\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix",
                     prefix, "--wait-min", "0", "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(good) == "value=1\n" and probe(base, "/ready")[0] == 200, 20,
             what="the loaded resource current, ready")
    status, body = probe(base, "/ready")
    assert status == 200  # reported, not failing
    (error,) = body["config_errors"]
    assert "late.toml" in error and "template.mode" in error, body
    assert config_errors_gauge(base) == 1

    write_resource(confdir, "late", TEMPLATE, f'dest = "{late}"\nkeys = ["/k"]\n')
    w.signal(signal.SIGHUP)
    wait_for(lambda: read(late) == "value=1\n", 20, what="the mended file loaded")
    wait_for(lambda: "config_errors" not in probe(base, "/ready")[1], 10, what="cleared")
    assert config_errors_gauge(base) == 0

    (confdir / "conf.d" / "bad.toml").write_text("[template\n")
    w.signal(signal.SIGHUP)
    wait_for(lambda: "bad.toml" in probe(base, "/ready")[1].get("config_reload_refused", ""),
             10, what="the refused reload said")
    assert probe(base, "/ready")[0] == 200 and config_errors_gauge(base) == 1
    (confdir / "conf.d" / "bad.toml").unlink()
    w.signal(signal.SIGHUP)
    wait_for(lambda: "config_reload_refused" not in probe(base, "/ready")[1], 10,
             what="cleared by a good reload")
    assert config_errors_gauge(base) == 0
    assert w.proc.poll() is None
