"""etcd's disasters against a real `confsync watch`: a recreated or restored cluster (revisions
start again), a member cut off from its quorum, and snapshots that must be linearizable."""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pyetcd import etcdrpc

from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client, has_quorum
from tests.support.etcd_server import EtcdMember, free_port

LIST = "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"
POOL = "{% for kv in gets('/g/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"


def start_watch(watchers: list[WatchProcess], tmp_path: Path, endpoints: str, prefix: str,
                *extra: str) -> WatchProcess:
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", endpoints,
                     "--prefix", prefix, "--wait-min", "0", *extra, log=tmp_path / "watch.log")
    watchers.append(w)
    return w


def resources(tmp_path: Path) -> tuple[Path, Path]:
    """`list` (guard off) over /k, `pool` (default guard: some keys -> none refused) over /g."""
    lst, pool = tmp_path / "list.out", tmp_path / "pool.out"
    write_resource(tmp_path / "cd", "list", LIST, f'dest = "{lst}"\nkeys = ["/k"]\nmin_keys = 0')
    write_resource(tmp_path / "cd", "pool", POOL, f'dest = "{pool}"\nkeys = ["/g"]')
    return lst, pool


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def test_recreated_cluster_new_data_dir_is_followed_and_guards_hold(
        etcd_private: EtcdMember, tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    """New data dir: revision 1 again. The old code resumed "from revision 32" and ignored
    every change until the new cluster passed it."""
    c = client(etcd_private.endpoint)
    for i in range(30):
        c.put(f"{prefix}/k/old{i % 3}", str(i))
    c.put(prefix + "/g/a", "1")
    lst, pool = resources(tmp_path)
    port = free_port()
    w = start_watch(watchers, tmp_path, etcd_private.endpoint, prefix,
                    "--metrics-address", f"127.0.0.1:{port}")
    wait_for(lambda: read(lst).count("\n") == 3 and read(pool) == "/g/a=1\n",
             what="first render")

    etcd_private.kill()
    shutil.rmtree(etcd_private.data_dir)
    etcd_private.start()
    c = client(etcd_private.endpoint)
    c.put(prefix + "/k/new", "fresh")  # revision 2 of the new cluster; /g is empty there
    wait_for(lambda: read(lst) == "/k/new=fresh\n", timeout=20,
             what=f"file follows the recreated cluster\n{w.output()[-3000:]}")
    w.wait_log("store reset")
    assert "below revision" in w.output()
    # The default guard refuses to empty a pool: the last good file stays, and says why.
    w.wait_log("pool")
    assert read(pool) == "/g/a=1\n"
    assert metric(port, "confsync_store_resets_total") == 1
    c.put(prefix + "/k/new", "later")  # and it keeps following the new cluster
    wait_for(lambda: read(lst) == "/k/new=later\n", timeout=10, what="following afterwards")
    c.put(prefix + "/g/b", "2")
    wait_for(lambda: read(pool) == "/g/b=2\n", timeout=10, what="pool with data again")


def test_other_cluster_ahead_in_revisions_is_told_by_its_cluster_id(
        etcd_binary: str, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A different cluster that is already past our revision: only the cluster id tells."""
    old = EtcdMember(etcd_binary, tmp_path / "old" / "data", token="cluster-old")
    (tmp_path / "old").mkdir()
    old.start()
    try:
        c = client(old.endpoint)
        c.put(prefix + "/k/a", "old")
        c.put(prefix + "/k/gone", "old")
        lst, _ = resources(tmp_path)
        w = start_watch(watchers, tmp_path, old.endpoint, prefix)
        wait_for(lambda: read(lst) == "/k/a=old\n/k/gone=old\n", what="first render")
        old.kill()
        # Another cluster (another token: another id), written past our revision on another
        # port, then moved to the port confsync follows.
        (tmp_path / "new").mkdir()
        new = EtcdMember(etcd_binary, tmp_path / "new" / "data", token="cluster-new",
                         peer_port=old.peer_port)
        new.start()
        cn = client(new.endpoint)
        for i in range(40):
            cn.put(f"{prefix}/k/a", f"new{i}")
        new.stop()
        new.client_port = old.client_port
        new.start()
        wait_for(lambda: read(lst) == "/k/a=new39\n", timeout=20,
                 what=f"the other cluster's state\n{w.output()[-3000:]}")
        w.wait_log("cluster id changed")
        new.stop()
    finally:
        old.stop()


def _etcd_tool(etcd_binary: str, name: str) -> str:
    tool = Path(etcd_binary).with_name(name)
    found = str(tool) if tool.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} next to {etcd_binary}")
    return found


def _backup(etcd_binary: str, m: EtcdMember, path: Path) -> Path:
    subprocess.run([_etcd_tool(etcd_binary, "etcdctl"), "--endpoints", m.endpoint,
                    "snapshot", "save", str(path)], check=True, capture_output=True)
    return path


def _restore(etcd_binary: str, m: EtcdMember, backup: Path) -> None:
    """`m` killed, its data dir replaced by `backup` (same name, token, ports: same cluster
    id), and started again."""
    m.kill()
    shutil.rmtree(m.data_dir)
    restore = [_etcd_tool(etcd_binary, "etcdutl") if Path(etcd_binary).with_name(
        "etcdutl").is_file() else _etcd_tool(etcd_binary, "etcdctl"),
        "snapshot", "restore", str(backup), "--data-dir", str(m.data_dir),
        "--name", m.name, "--initial-cluster", f"{m.name}={m.peer_url}",
        "--initial-advertise-peer-urls", m.peer_url,
        "--initial-cluster-token", m.token or f"confsync-test-{m.peer_port}"]
    subprocess.run(restore, check=True, capture_output=True)
    m.start()


def test_restore_from_older_snapshot_without_bump_revision(
        etcd_binary: str, etcd_private: EtcdMember, tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    m = etcd_private
    c = client(m.endpoint)
    c.put(prefix + "/k/a", "1")
    c.put(prefix + "/k/b", "1")
    backup = _backup(etcd_binary, m, tmp_path / "backup.db")
    for i in range(20):  # history the restore will forget
        c.put(prefix + "/k/a", f"after{i}")
    c.delete(prefix + "/k/b")
    c.put(prefix + "/k/c", "after")
    lst, _ = resources(tmp_path)
    w = start_watch(watchers, tmp_path, m.endpoint, prefix)
    wait_for(lambda: read(lst) == "/k/a=after19\n/k/c=after\n", what="first render")

    _restore(etcd_binary, m, backup)
    wait_for(lambda: read(lst) == "/k/a=1\n/k/b=1\n", timeout=20,
             what=f"the restored state\n{w.output()[-3000:]}")
    w.wait_log("store reset")
    client(m.endpoint).put(prefix + "/k/d", "new")
    wait_for(lambda: read(lst) == "/k/a=1\n/k/b=1\n/k/d=new\n", timeout=10,
             what="following the restored cluster")


@pytest.mark.parametrize("how", ["restored", "recreated"])
def test_same_cluster_id_written_past_our_revision_while_stopped_is_another_history(
        how: str, etcd_binary: str, etcd_private: EtcdMember, tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    """confsync frozen (SIGSTOP) while etcd is restored from an older backup, or recreated,
    with the same configuration (same cluster id), and written past every revision confsync
    saw. Neither the id nor the revision tells; the quiet prefix (/g, resume point at the
    first snapshot) and the busy one (/k) resumed "from their revisions" on another history:
    its later writes went on top of the old values (/k/a=busy29 and /g/a=old beside the new
    keys), /ready 200, no store reset. The last write seen, read back at its revision, tells."""
    m = etcd_private
    c = client(m.endpoint)
    c.put(prefix + "/k/a", "backup")
    c.put(prefix + "/g/a", "backup")
    backup = _backup(etcd_binary, m, tmp_path / "backup.db")
    c.put(prefix + "/g/a", "old")
    lst, pool = resources(tmp_path)
    port = free_port()
    w = start_watch(watchers, tmp_path, m.endpoint, prefix,
                    "--metrics-address", f"127.0.0.1:{port}")
    wait_for(lambda: read(lst) == "/k/a=backup\n" and read(pool) == "/g/a=old\n",
             what="first render")
    for i in range(30):
        c.put(prefix + "/k/a", f"busy{i}")
    wait_for(lambda: read(lst) == "/k/a=busy29\n", what="the busy prefix followed")
    seen = int(c.get_response(prefix + "/k/a").header.revision)

    w.signal(signal.SIGSTOP)
    try:
        if how == "restored":
            _restore(etcd_binary, m, backup)
        else:
            m.kill()
            shutil.rmtree(m.data_dir)
            m.start()
        c = client(m.endpoint)
        while int(c.get_response("/").header.revision) <= seen:  # (bounded: ~40 puts)
            c.put(prefix + "/other", "x")
        c.put(prefix + "/k/new", "1")
        c.put(prefix + "/g/new", "1")
    finally:
        w.signal(signal.SIGCONT)
    old = "/k/a=backup\n" if how == "restored" else ""
    wait_for(lambda: read(lst) == old + "/k/new=1\n"
             and read(pool) == old.replace("/k/", "/g/") + "/g/new=1\n", timeout=15,
             what=f"the {how} cluster's state\n{w.output()[-3000:]}")
    assert "holds another history" in w.output()
    assert metric(port, "confsync_store_resets_total") == 1
    assert http_status(f"http://127.0.0.1:{port}/ready") == 200


def _is_leader(member: EtcdMember) -> bool:
    status = client(member.endpoint).maintenancestub.Status(etcdrpc.StatusRequest(), 5)
    return bool(status.leader == status.header.member_id)


def test_member_without_leader_is_degraded_and_resumes_exactly(
        cluster: list[EtcdMember], tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    """Members B and C stop; A, the one confsync uses, keeps its port open but has no leader.
    Without etcd's require-leader option the watch would stay open and silent for good."""
    a, b, c = cluster
    ca = client(a.endpoint)
    ca.put(prefix + "/k/a", "1")
    lst, _ = resources(tmp_path)
    (tmp_path / "cd" / "conf.d" / "pool.toml").unlink()  # one prefix: one resume point
    port = free_port()
    w = start_watch(watchers, tmp_path, ",".join(m.endpoint for m in cluster), prefix,
                    "--metrics-address", f"127.0.0.1:{port}")
    wait_for(lambda: read(lst) == "/k/a=1\n", what="first render")
    ca.put(prefix + "/k/a", "2")
    wait_for(lambda: read(lst) == "/k/a=2\n", what="second render")
    last = int(ca.get_response(prefix + "/k/a").header.revision)
    assert http_status(f"http://127.0.0.1:{port}/ready") == 200

    b.stop()
    c.stop()
    w.wait_log("degraded", timeout=15)
    assert "no leader" in w.output()
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/ready") == 503, timeout=5,
             what="/ready false")
    assert metric(port, "confsync_watch_connected") == 0
    assert read(lst) == "/k/a=2\n"

    b.start(wait=False)
    c.start(wait=False)
    b.wait_ready()
    c.wait_ready()
    wait_for(lambda: has_quorum(a.endpoint), timeout=30, what="quorum again")
    ca = client(a.endpoint)
    for i in range(10):
        ca.put(f"{prefix}/k/n{i}", str(i))
    ca.delete(prefix + "/k/a")
    expected = "".join(f"/k/n{i}={i}\n" for i in range(10))
    wait_for(lambda: read(lst) == expected, timeout=30,
             what=f"resumed after quorum returned\n{w.output()[-3000:]}")
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/ready") == 200, timeout=10,
             what="/ready again")
    # Exact resume: the watch continued from the revision after the last one seen, without a
    # second snapshot (which would hide lost or duplicated events).
    assert f"from revision {last + 1}" in w.output().split("degraded", 1)[1]
    assert metric(port, "confsync_snapshots_total") == 1
    assert metric(port, "confsync_changes_received_total") == 1 + 11  # a=2, then 10 puts + 1


def test_snapshot_never_predates_an_acknowledged_put(
        cluster: list[EtcdMember], tmp_path: Path, prefix: str) -> None:
    """A follower is frozen while the leader acknowledges puts, then thawed and read at once: a
    serializable read would answer from its stale state, a linearizable one waits for it."""
    leader = next(m for m in cluster if _is_leader(m))
    b = next(m for m in cluster if m is not leader)
    ca = client(leader.endpoint)
    store = EtcdStore(EtcdSettings(endpoints=(b.endpoint,), timeout=10.0))
    try:
        for i in range(5):
            b.freeze()
            try:
                ca.put(prefix + "/k/v", str(i))  # acknowledged by the other two
            finally:
                b.thaw()
            snapshot = store.snapshot([prefix + "/k/"])
            assert snapshot.values.get(prefix + "/k/v") == str(i).encode(), (i, snapshot)
    finally:
        store.close()
