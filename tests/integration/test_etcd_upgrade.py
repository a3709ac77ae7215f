"""A rolling etcd upgrade (3.4 -> 3.5) under a running watch and registrar: bench/etcd_upgrade.py
as a test. About 40 s, so it runs only when asked: CONFSYNC_TEST_ETCD_UPGRADE=1 (the old binary
from $CONFSYNC_TEST_ETCD_OLD, default Debian's /usr/bin/etcd 3.4; the new one the suite's)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from bench import etcd_upgrade
from tests.support.etcd_server import find_etcd
from tests.support.haproxy import find_haproxy

OLD = os.environ.get("CONFSYNC_TEST_ETCD_OLD", "/usr/bin/etcd")
NEW = find_etcd() or ""
HAPROXY = find_haproxy() or "/usr/sbin/haproxy"

pytestmark = pytest.mark.skipif(
    not os.environ.get("CONFSYNC_TEST_ETCD_UPGRADE")
    or not all(Path(p).exists() for p in (OLD, NEW, HAPROXY)),
    reason="CONFSYNC_TEST_ETCD_UPGRADE=1, an old etcd, a new etcd and haproxy")


def test_rolling_upgrade_keeps_keys_files_and_probes_whole(tmp_path: Path) -> None:
    args = argparse.Namespace(old=OLD, new=NEW, haproxy=HAPROXY, rate=20.0)
    assert etcd_upgrade.run(args, tmp_path) == []
