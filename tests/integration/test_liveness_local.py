"""The conf.d/templates watcher (`watch.confdir = true`) is restarted when it dies: here, when
conf.d is replaced by a new directory (how config-management and Kubernetes ConfigMaps deploy),
which ends watchdog's emitter for the old one (issue 13, item 5)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for


def test_edits_after_conf_d_was_replaced_still_reload(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  v: one\n")
    cd = tmp_path / "cd"
    write_resource(cd, "app", "{{ getv('/app/v') }}\n",
                   f'dest = "{tmp_path / "out"}"\nkeys = ["/app"]')
    config = tmp_path / "confsync.toml"
    config.write_text(f'confdir = "{cd}"\nbackend = "file"\n[file]\npaths = ["{data}"]\n'
                      f'[watch]\nconfdir = true\nwait_min = "0s"\n')
    w = WatchProcess("--config", str(config), log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(tmp_path / "out") == "one\n", 20, what="first render")
        staged = tmp_path / "conf.d.new"
        shutil.copytree(cd / "conf.d", staged)
        shutil.rmtree(cd / "conf.d")
        staged.rename(cd / "conf.d")
        time.sleep(2.5)  # a heartbeat or two: the watcher notices and restarts
        (cd / "conf.d" / "app.toml").write_text(
            f'[template]\nsrc = "app.tmpl"\ndest = "{tmp_path / "out2"}"\nkeys = ["/app"]\n')
        wait_for(lambda: read(tmp_path / "out2") == "one\n", 20,
                 what=f"the edit reloaded\n{w.output()[-2000:]}")
        assert w.proc.poll() is None
    finally:
        code = w.stop()
    assert code == 0


def test_metrics_server_serves_again_after_an_unexpected_error() -> None:
    from confsync.ops.metrics import Metrics, MetricsServer
    from tests.support.http_probe import probe

    metrics = Metrics()
    metrics.heartbeat()
    server = MetricsServer(metrics, "127.0.0.1:0")
    real = server._server.serve_forever
    calls = []

    def failing_once(poll_interval: float = 0.5) -> None:
        calls.append(poll_interval)
        if len(calls) == 1:
            raise RuntimeError("boom")
        real(poll_interval)

    server._server.serve_forever = failing_once  # type: ignore[method-assign]
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: probe(base, "/health")[0] == 200, 10, what="served again")
        assert len(calls) == 2
    finally:
        server.close()
