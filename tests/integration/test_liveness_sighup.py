"""SIGHUP against real etcd (issue 13, items 8 and 9): bad data never blocks a reload, a broken
edit still does, and a reload that changes the watched prefixes never writes a partial file."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port

LIST = "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"


def start(watchers: list[WatchProcess], tmp_path: Path, etcd: EtcdMember,
          prefix: str, env: dict[str, str] | None = None) -> WatchProcess:
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", log=tmp_path / "watch.log", env=env)
    watchers.append(w)
    return w


def test_bad_data_in_one_resource_does_not_block_adding_another(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/a/v", "fine")
    c.put(prefix + "/b/port", "not-a-port")
    c.put(prefix + "/c/v", "new")
    cd = tmp_path / "cd"
    a, b, new = tmp_path / "a.out", tmp_path / "b.out", tmp_path / "c.out"
    write_resource(cd, "a", "{{ getv('/a/v') }}\n", f'dest = "{a}"\nkeys = ["/a"]')
    write_resource(cd, "b", "port {{ getv('/b/port') | port }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    w = start(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(a) == "fine\n", 20, what="first render")
    w.wait_log("resource b: render failed")

    # c reads a new prefix (the follower is replaced) ...
    write_resource(cd, "c", "{{ getv('/c/v') }}\n", f'dest = "{new}"\nkeys = ["/c"]')
    w.signal(signal.SIGHUP)
    wait_for(lambda: read(new) == "new\n", 20, what=f"c rendered\n{w.output()[-2000:]}")
    w.wait_log("configuration reloaded")
    assert "refused" not in w.output()
    w.wait_log("resource b: render failed", count=2)  # still reported, per resource
    assert not b.exists()

    # ... and an edit within the same prefixes goes the other path: taken as well.
    write_resource(cd, "c", "c={{ getv('/c/v') }}\n", f'dest = "{new}"\nkeys = ["/c"]')
    w.signal(signal.SIGHUP)
    wait_for(lambda: read(new) == "c=new\n", 20, what="c edited")
    w.wait_log("resource b: render failed", count=3)
    assert w.proc.poll() is None


def test_an_edit_that_breaks_a_rendering_resource_is_refused(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/b/port", "8080")
    c.put(prefix + "/c/v", "new")
    cd = tmp_path / "cd"
    b, new = tmp_path / "b.out", tmp_path / "c.out"
    write_resource(cd, "b", "port {{ getv('/b/port') | port }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    w = start(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(b) == "port 8080\n", 20, what="first render")

    # b renders with its running definition and fails with the new one: refused, c waits.
    write_resource(cd, "b", "port {{ getv('/b/missing') }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    write_resource(cd, "c", "{{ getv('/c/v') }}\n", f'dest = "{new}"\nkeys = ["/c"]')
    w.signal(signal.SIGHUP)
    w.wait_log("configuration reload refused")
    assert "renders" in w.output().split("configuration reload refused")[-1]
    # A template syntax error is a configuration error: refused too.
    write_resource(cd, "b", "port {{ getv('/b/port') | port }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    write_resource(cd, "c", "{% if %}\n", f'dest = "{new}"\nkeys = ["/c"]')
    w.signal(signal.SIGHUP)
    # (No line here once meant a dead daemon: the refusal closed the new prefixes' watch
    # session as its position check made its first gRPC stub, SIGSEGV; see _Client.)
    w.wait_log("configuration reload refused", count=2, timeout=20)
    assert "syntax error" in w.output().split("configuration reload refused")[-1]
    # The running set still follows its data.
    c.put(prefix + "/b/port", "9090")
    wait_for(lambda: read(b) == "port 9090\n", 20, what="the running set follows")
    assert not new.exists()
    assert w.proc.poll() is None


def test_prefix_changing_sighups_never_write_a_partial_file(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A writer keeps changing three keys while SIGHUPs switch between two resource sets with
    different prefixes. Every file ever installed (each reload records its line count) holds
    all three entries: nothing queued by a stopped follower lands on a mirror without them."""
    c = client(etcd.endpoint)
    for name in "abc":
        c.put(f"{prefix}/k/{name}", "0")
    c.put(prefix + "/x/v", "x")
    for i in range(60):  # a slow snapshot of the new prefixes widens the window
        c.put(f"{prefix}/x/bulk/{i}", "b" * 100_000)
    cd = tmp_path / "cd"
    dest, counts = tmp_path / "list.out", tmp_path / "counts"
    body = (f'dest = "{dest}"\nkeys = ["/k"]\n'
            f'reload_cmd = ["sh", "-c", "wc -l < {dest} >> {counts}"]')
    write_resource(cd, "list", LIST, body)
    w = start(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(dest).count("\n") == 3, 20, what="first render")

    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            n += 1
            try:
                c.put(f"{prefix}/k/{'abc'[n % 3]}", str(n))
            except Exception:
                time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(8):
            if i % 2 == 0:
                write_resource(cd, "other", "{{ getv('/x/v') }}\n",
                               f'dest = "{tmp_path / "other.out"}"\nkeys = ["/x"]')
            else:
                (cd / "conf.d" / "other.toml").unlink()
            w.signal(signal.SIGHUP)
            w.wait_log("configuration reloaded", count=i + 1, timeout=20)
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    lines = [int(x) for x in read(counts).split()]
    assert len(lines) > 10, lines
    assert min(lines) == 3, f"a file with fewer than 3 entries was installed: {lines}"
    assert "refused" not in w.output()
    assert w.proc.poll() is None


def test_a_sighup_while_etcd_is_away_is_applied_once_it_is_back(
        etcd_private: EtcdMember, tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    """A reload with new prefixes needs a snapshot of them. etcd frozen at that moment used to
    refuse the reload for good: the new resource stayed unapplied until another SIGHUP. Now the
    running set keeps following, and the reload is tried again until it succeeds."""
    c = client(etcd_private.endpoint)
    c.put(prefix + "/a/v", "one")
    c.put(prefix + "/b/v", "bee")
    cd = tmp_path / "cd"
    a, b = tmp_path / "a.out", tmp_path / "b.out"
    write_resource(cd, "a", "{{ getv('/a/v') }}\n", f'dest = "{a}"\nkeys = ["/a"]')
    w = start(watchers, tmp_path, etcd_private, prefix, env={"CONFSYNC_ETCD_TIMEOUT": "1s"})
    wait_for(lambda: read(a) == "one\n", 20, what="first render")
    etcd_private.freeze()
    try:
        write_resource(cd, "b", "{{ getv('/b/v') }}\n", f'dest = "{b}"\nkeys = ["/b"]')
        w.signal(signal.SIGHUP)
        w.wait_log("the reload is tried again", timeout=15)
    finally:
        etcd_private.thaw()
    wait_for(lambda: read(b) == "bee\n", 40,
             what=f"the reload applied once etcd was back\n{w.output()[-3000:]}")
    c.put(prefix + "/a/v", "two")  # and both resources follow
    wait_for(lambda: read(a) == "two\n", 20, what="the running set still follows")
    assert w.proc.poll() is None


def test_reload_retried_while_etcd_is_away_does_not_flood_the_log(
        etcd_private: EtcdMember, tmp_path: Path, prefix: str,
        watchers: list[WatchProcess]) -> None:
    """A reload with new prefixes is retried (1-30 s apart) while etcd is away: two lines per
    retry, for hours, was 240 lines an hour. The first refusal is logged, and the same one again
    at most every 5 minutes; the retries go on and the reload applies once etcd is back."""
    c = client(etcd_private.endpoint)
    c.put(prefix + "/a/v", "one")
    c.put(prefix + "/b/v", "bee")
    cd = tmp_path / "cd"
    a, b = tmp_path / "a.out", tmp_path / "b.out"
    write_resource(cd, "a", "{{ getv('/a/v') }}\n", f'dest = "{a}"\nkeys = ["/a"]')
    w = start(watchers, tmp_path, etcd_private, prefix)
    wait_for(lambda: read(a) == "one\n", 20, what="first render")
    etcd_private.kill()
    write_resource(cd, "b", "{{ getv('/b/v') }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    w.signal(signal.SIGHUP)
    w.wait_log("the reload is tried again", timeout=10)
    # Retries 0.5-1 s, then 1-2 s apart (jittered): two have run by now, each of which used
    # to log its two lines again. (A third, 2-4 s later, would only repeat the proof.)
    time.sleep(3.5)
    log = w.output()
    assert log.count("configuration reload refused") == 1, log
    assert log.count("configuration reload: reading a snapshot") == 1, log
    etcd_private.start()
    wait_for(lambda: read(b) == "bee\n", 20,
             what=f"the reload applied once etcd was back\n{w.output()[-3000:]}")


def test_an_edit_refused_for_a_failure_that_passes_is_tried_again(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A new definition whose render fails for now (here render_timeout on a "busy machine";
    a DNS lookup failing for now is the same) while the running one renders: refused, and
    tried again with backoff. It was refused for good: the edit waited for another SIGHUP."""
    c = client(etcd.endpoint)
    c.put(prefix + "/b/v", "1")
    cd = tmp_path / "cd"
    b, busy = tmp_path / "b.out", tmp_path / "machine-is-busy"
    write_resource(cd, "b", "{{ getv('/b/v') }}\n", f'dest = "{b}"\nkeys = ["/b"]')
    w = start(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(b) == "1\n", 20, what="first render")
    busy.touch()
    write_resource(cd, "b",
                   f"{{% if fileExists('{busy}') %}}{{% for i in range(10**12) %}}{{% endfor %}}"
                   "{% endif %}v={{ getv('/b/v') }}\n",
                   f'dest = "{b}"\nkeys = ["/b"]\nrender_timeout = "0.3s"')
    w.signal(signal.SIGHUP)
    w.wait_log("the reload is tried again in")
    assert read(b) == "1\n"
    busy.unlink()  # quiet again; no SIGHUP, no edit, no data change from here on
    wait_for(lambda: read(b) == "v=1\n", 30, what=f"the reload tried again\n{w.output()[-2000:]}")
    w.wait_log("configuration reloaded")


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_a_sighup_while_starting_is_held_and_taken_as_a_reload(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """SIGHUP's default action ends the process: one sent while confsync imported and set up
    (before the loop's own handler) ended it with status 129."""
    client(etcd.endpoint).put(prefix + "/k/a", "1")
    out = tmp_path / "out"
    write_resource(tmp_path / "cd", "r", LIST, f'dest = "{out}"\nkeys = ["/k"]')
    w = start(watchers, tmp_path, etcd, prefix)
    # gRPC's extension is loaded by the start-up preload: past entry(), before the loop.
    wait_for(lambda: "cygrpc" in _maps(w.proc.pid) or w.proc.poll() is not None, 30,
             what="gRPC loaded")
    w.signal(signal.SIGHUP)
    wait_for(lambda: read(out) == "/k/a=1\n" or w.proc.poll() is not None, 20,
             what=f"first render\n{w.output()[-2000:]}")
    assert w.proc.poll() is None, f"exited with {w.proc.returncode}:\n{w.output()[-2000:]}"
    w.wait_log("SIGHUP: reloading configuration")
    assert w.stop() == 0


def _snapshots(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("confsync_snapshots_total "):
                return float(line.split()[1])
    return float("nan")


def test_a_sighup_that_sets_watch_interval_also_rereads_the_snapshot_at_it(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """`[watch] interval` re-reads a snapshot and re-renders; a SIGHUP that set it (same
    prefixes, same store: the follower goes on) re-rendered at it, but the follower kept the
    interval it was started with: no re-read, the stream's safety net off until a restart."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    cd, dest, config = tmp_path / "cd", tmp_path / "out", tmp_path / "confsync.toml"
    write_resource(cd, "app", LIST, f'dest = "{dest}"\nkeys = ["/k"]')
    port = free_port()

    def settings(interval: str) -> None:
        config.write_text(f'confdir = "{cd}"\nprefix = "{prefix}"\n[etcd]\nendpoints = '
                          f'["{etcd.endpoint}"]\n[watch]\nwait_min = "0s"\n'
                          f'interval = "{interval}"\n')

    settings("0s")
    w = WatchProcess("--config", str(config), "--metrics-address", f"127.0.0.1:{port}",
                     log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(dest) == "/k/v=1\n", 20, what="first render")
    settings("1s")
    w.signal(signal.SIGHUP)
    w.wait_log("configuration reloaded")
    before = _snapshots(port)
    time.sleep(2.5)
    assert _snapshots(port) - before >= 1, w.output()[-2000:]
    settings("0s")  # and off again: no more re-reads
    w.signal(signal.SIGHUP)
    w.wait_log("configuration reloaded", count=2)
    time.sleep(1.2)  # (one due before the reload may still come)
    before = _snapshots(port)
    time.sleep(1.5)
    assert _snapshots(port) == before, w.output()[-2000:]
