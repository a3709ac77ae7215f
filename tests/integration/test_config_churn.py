"""Months of configuration churn under one `confsync watch`: resources added, removed and
added back, and SIGHUPs (a config-management run sends one each time) between data changes.
Whatever a resource leaves behind must go with it, and what is still true of the resources
that stay must survive the reload.
"""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port

pytestmark = pytest.mark.etcd

LIST = "{% for kv in gets('/x/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


@pytest.fixture
def watch(etcd: EtcdMember, tmp_path: Path, prefix: str) -> Iterator[tuple[WatchProcess, int]]:
    """`confsync watch` of resources `keep` and `gone` (each with a reload_cmd and a check),
    /metrics on a port of its own."""
    client(etcd.endpoint).put(f"{prefix}/x/1", "one")
    for name in ("keep", "gone"):
        write_resource(tmp_path / "confdir", name, LIST,
                       f'dest = "{tmp_path / name}.out"\nkeys = ["/x"]\n'
                       f'check_cmd = "true {{{{src}}}}"\nreload_cmd = "true {name}"\n')
    port = free_port()
    process = WatchProcess("--confdir", str(tmp_path / "confdir"), "--endpoints",
                           etcd.endpoint, "--prefix", prefix, "--wait-min", "0s",
                           "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    try:
        wait_for(lambda: read(tmp_path / "gone.out") == "/x/1=one\n", 20, what="first render")
        yield process, port
    finally:
        process.stop()


def test_a_removed_resource_leaves_no_metric_series(
        watch: tuple[WatchProcess, int], etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    """Each resource ever removed used to keep about 40 lines of /metrics (its counters and
    histograms) for the daemon's life: conf.d generated per service, churned for months."""
    process, port = watch
    client(etcd.endpoint).put(f"{prefix}/x/2", "two")  # an update: checks and reloads counted
    wait_for(lambda: "/x/2=two" in read(tmp_path / "gone.out"), 10, what="update")
    wait_for(lambda: 'confsync_reloads_total{outcome="ok",resource="gone"}'
             in metrics_text(port), 10, what="gone's reload counted")
    (tmp_path / "confdir" / "conf.d" / "gone.toml").unlink()
    process.signal(signal.SIGHUP)
    process.wait_log("configuration reloaded: 1 resources")
    text = metrics_text(port)
    assert 'resource="gone"' not in text, [line for line in text.splitlines()
                                           if 'resource="gone"' in line]
    # (the first render and the update)
    assert 'confsync_reloads_total{outcome="ok",resource="keep"} 2.0' in text, text
    assert "confsync_resources 1.0" in text
    assert read(tmp_path / "gone.out") == "/x/1=one\n/x/2=two\n", "a removed dest is left alone"
