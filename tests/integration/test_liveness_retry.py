"""Failed applies are retried until the file is installed and reloaded, and `watch.interval`
re-renders every resource (issue 13, item 7), against real etcd and the real `confsync watch`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.disk import fill
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe, ready

TEMPLATE = "value={{ getv('/k/v') }}\n"


def start(watchers: list[WatchProcess], tmp_path: Path, etcd: EtcdMember, prefix: str,
          env: dict[str, str] | None = None, *args: str) -> WatchProcess:
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", *args, log=tmp_path / "watch.log",
                     env=env)
    watchers.append(w)
    return w


def test_failed_check_is_retried_until_it_passes(etcd: EtcdMember, tmp_path: Path, prefix: str,
                                                  watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, flag = tmp_path / "out.conf", tmp_path / "check-fails"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\n'
                   f'check_cmd = ["sh", "-c", "test ! -e {flag}"]')
    w = start(watchers, tmp_path, etcd, prefix, None, "--log-level", "debug")  # (the retries)
    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    flag.touch()
    c.put(prefix + "/k/v", "2")
    w.wait_log("check failed", timeout=20, count=2)  # the change, then at least one retry
    assert read(dest) == "value=1\n"
    flag.unlink()  # nothing in etcd changes from here on
    wait_for(lambda: read(dest) == "value=2\n", 45, what=f"a retry\n{w.output()[-2000:]}")
    assert w.proc.poll() is None


def test_failed_reload_is_retried_until_the_file_is_live(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, flag, live = tmp_path / "out.conf", tmp_path / "reload-fails", tmp_path / "live"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\n'
                   f'reload_cmd = ["sh", "-c", "test ! -e {flag} && cp {dest} {live}"]')
    w = start(watchers, tmp_path, etcd, prefix, None, "--log-level", "debug")  # (the retries)
    wait_for(lambda: read(live) == "value=1\n", 20, what="first render and reload")
    flag.touch()
    c.put(prefix + "/k/v", "2")
    w.wait_log("reload failed", timeout=20, count=2)
    assert read(live) == "value=1\n" and read(dest) == "value=1\n"  # rolled back
    flag.unlink()
    wait_for(lambda: read(live) == "value=2\n", 45, what=f"a retry\n{w.output()[-2000:]}")
    assert read(dest) == "value=2\n"


def test_a_render_stopped_by_render_timeout_is_retried_without_a_data_change(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A render that overran render_timeout once (a loaded machine, a big template) is tried
    again with the retry backoff, /ready 503 meanwhile; it used to wait for the next change."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, slow = tmp_path / "out.conf", tmp_path / "machine-is-busy"
    # The run time depends on something outside the data: a file standing for a busy machine.
    write_resource(tmp_path / "cd", "app",
                   f"{{% if fileExists('{slow}') %}}{{% for i in range(10**12) %}}{{% endfor %}}"
                   f"{{% endif %}}{TEMPLATE}",
                   f'dest = "{dest}"\nkeys = ["/k"]\nrender_timeout = "0.3s"')
    port = free_port()
    w = start(watchers, tmp_path, etcd, prefix, None, "--metrics-address", f"127.0.0.1:{port}",
              "--log-level", "debug")  # (the retries)
    wait_for(lambda: read(dest) == "value=1\n" and ready(port)[0] == 200, 20,
             what="first render, ready")
    slow.touch()
    c.put(prefix + "/k/v", "2")
    w.wait_log("render_timeout (0.3s)", timeout=20, count=2)  # the change, then a retry
    status, body = ready(port)
    assert status == 503 and "failing: app" in body["reasons"], body
    assert read(dest) == "value=1\n"
    slow.unlink()  # the machine is quiet again; nothing in etcd changes from here on
    wait_for(lambda: read(dest) == "value=2\n", 45, what=f"a retry\n{w.output()[-2000:]}")
    wait_for(lambda: ready(port)[0] == 200, 10, what="ready again")


def test_interval_repairs_a_hand_edited_dest(etcd: EtcdMember, tmp_path: Path, prefix: str,
                                             watchers: list[WatchProcess]) -> None:
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w = start(watchers, tmp_path, etcd, prefix, env={"CONFSYNC_WATCH_INTERVAL": "1s"})
    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    dest.write_text("value=edited by hand\n")
    wait_for(lambda: read(dest) == "value=1\n", 20, what=f"repair\n{w.output()[-2000:]}")
    w.wait_log("edited outside confsync", timeout=5)


def test_an_interval_or_a_change_that_leaves_the_file_as_it_was_logs_no_info_line(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """Each interval pass logged "is up to date" at INFO for every resource (20 resources at
    a 60 s interval: 29,000 lines a day saying nothing happened), and so did each change of a
    key under a resource's prefix that its file does not show (per-request keys: one a
    change). Now DEBUG; a write, a repair and the start still say what they did."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w = start(watchers, tmp_path, etcd, prefix, {"CONFSYNC_WATCH_INTERVAL": "1s"},
              "--log-level", "debug", "--log-format", "json")  # (to see every pass)

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]

    def current(change: str | None = None) -> list[dict[str, Any]]:
        return [r for r in records() if r.get("resource") == "app"
                and r.get("outcome") == "unchanged"
                and (change is None or change in r.get("changed_keys", []))]

    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    wait_for(lambda: len(current()) >= 2, 20, what="two interval passes")
    c.put(prefix + "/k/unrelated", "x")
    wait_for(lambda: current(prefix + "/k/unrelated"), 20, what="the change applied")
    c.put(prefix + "/k/v", "2")
    wait_for(lambda: read(dest) == "value=2\n", 20, what="a change it shows")
    dest.write_text("value=edited by hand\n")
    w.wait_log("edited outside confsync", timeout=20)
    assert all(r["level"] == "debug" for r in current()), current()
    said = [r["message"] for r in records() if r.get("resource") == "app"
            and r["level"] != "debug"]
    assert len(said) == 4 and all(" wrote " in m for m in said[:3]), said  # start, v=2, repair


def test_full_disk_is_retried_once_space_is_back(etcd: EtcdMember, tmp_path: Path, prefix: str,
                                                 disk: Path,
                                                 watchers: list[WatchProcess]) -> None:
    try:
        c = client(etcd.endpoint)
        c.put(prefix + "/k/v", "1")
        dest = disk / "out.conf"
        write_resource(tmp_path / "cd", "app", TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
        w = start(watchers, tmp_path, etcd, prefix)
        wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
        filler = disk / "filler"
        fill(filler)
        c.put(prefix + "/k/v", "2" * 5000)
        w.wait_log("stage failed", timeout=20)
        assert read(dest) == "value=1\n"
        filler.unlink()
        wait_for(lambda: read(dest) == "value=" + "2" * 5000 + "\n", 45,
                 what=f"a retry once space is back\n{w.output()[-2000:]}")
    finally:
        for w in watchers:
            w.stop()  # (before the disk goes)


def test_health_stays_up_through_a_check_that_takes_longer_than_its_max_age(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A step bounded by its timeout is no stuck loop: /health said 503 after 10 s of a 12 s
    check (check_timeout 20 s), and a liveness probe restarted a daemon that was only
    waiting, at every apply that ran the same check."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, slow, started = tmp_path / "out.conf", tmp_path / "slow", tmp_path / "check-started"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\ncheck_timeout = "20s"\n'
                   f'check_cmd = ["sh", "-c", "test ! -e {slow} || (touch {started}; sleep 12.5)"]')
    port = free_port()
    start(watchers, tmp_path, etcd, prefix, None, "--metrics-address", f"127.0.0.1:{port}")
    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    slow.touch()
    c.put(prefix + "/k/v", "2")
    wait_for(started.exists, 20, what="the slow check")
    since = time.monotonic()
    statuses = []
    while read(dest) != "value=2\n" and time.monotonic() - since < 30:
        statuses.append((round(time.monotonic() - since, 1),
                         probe(f"http://127.0.0.1:{port}", "/health")[0]))
        time.sleep(0.5)
    assert read(dest) == "value=2\n"
    assert any(at > 10.5 for at, _ in statuses), statuses  # asked past the 10 s max age
    assert all(status == 200 for _, status in statuses), statuses


def test_a_target_back_while_its_resource_fails_costs_one_look_not_one_per_second(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A reload target that comes back while its resource fails before the reload step (a
    check that fails) was found "back" at every heartbeat, and each time rendered and checked
    the resource at once: check_cmd ran every second for as long as it failed, the retry
    backoff bypassed, and "answers again" logged each time."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, flag, runs = tmp_path / "out.conf", tmp_path / "check-fails", tmp_path / "runs"
    pidfile = tmp_path / "app.pid"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\nreload_signal = "SIGWINCH"\n'
                   f'pidfile = "{pidfile}"\n'
                   f'check_cmd = ["sh", "-c", "echo >> {runs}; test ! -e {flag}"]')
    w = start(watchers, tmp_path, etcd, prefix)
    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")  # nothing runs yet
    flag.touch()
    c.put(prefix + "/k/v", "2")
    w.wait_log("check failed", timeout=20)
    service = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{service.pid}\n")
        w.wait_log("reload target answers again", timeout=10)
        checks = read(runs).count("\n")
        time.sleep(4)
        output = w.output()
        assert output.count("reload target answers again") == 1, output[-3000:]
        assert read(runs).count("\n") - checks <= 3, output[-3000:]  # the backoff's pace
        flag.unlink()  # the check passes: installed and reloaded (SIGWINCH: ignored by sleep)
        c.put(prefix + "/k/v", "3")  # (sooner than the retry, its backoff grown meanwhile)
        wait_for(lambda: read(dest) == "value=3\n", 20, what=f"the change\n{w.output()[-2000:]}")
        w.wait_log("sent SIGWINCH", timeout=10)
    finally:
        service.kill()
        service.wait()


def test_a_resource_failing_for_good_logs_its_failure_once_not_at_every_try(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A check or reload that fails for days is retried every 15-30 s, and each try logged
    an ERROR (and a reload its failed reload back) with its "trying again" line: ~800 lines
    an hour for two resources, forever; a template broken for good logged an ERROR at every
    data change (28,800 an hour under per-request keys). Now a failure like the last one
    logged is a DEBUG line, logged again once every 5 minutes; /ready says it all along."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    checks, reloads = tmp_path / "checks", tmp_path / "reloads"
    # A new number in every failure's output, as HAProxy's pid or the staged file's name.
    write_resource(tmp_path / "cd", "checked", TEMPLATE,
                   f'dest = "{tmp_path}/checked.conf"\nkeys = ["/k"]\n'
                   f'check_cmd = ["sh", "-c", "echo >> {checks}; echo bad $$ >&2; exit 1"]')
    write_resource(tmp_path / "cd", "reloaded", TEMPLATE,
                   f'dest = "{tmp_path}/reloaded.conf"\nkeys = ["/k"]\n'
                   f'reload_cmd = ["sh", "-c", "echo >> {reloads}; echo down $$ >&2; exit 1"]')
    write_resource(tmp_path / "cd", "broken", "{{ getv('/k/missing') }}{{ getv('/k/v') }}\n",
                   f'dest = "{tmp_path}/broken.conf"\nkeys = ["/k"]\n')
    port = free_port()
    w = start(watchers, tmp_path, etcd, prefix, None, "--metrics-address", f"127.0.0.1:{port}",
              "--log-level", "debug")  # (to see the failures not logged at ERROR)

    def runs(path: Path) -> int:
        return read(path).count("\n")

    # The first try and three retries of each (backoff 1, 2, 4 s, jittered) ...
    wait_for(lambda: runs(checks) >= 4 and runs(reloads) >= 8, 40,
             what=f"three retries\n{w.output()[-3000:]}")
    for n in range(2, 5):  # ... and three data changes
        c.put(prefix + "/k/v", str(n))
        w.wait_log("resource broken: render failed", timeout=20, count=n)
    status, body = ready(port)
    assert status == 503 and "failing: broken, checked, reloaded" in body["reasons"], body
    output = w.output()
    for failure in ("checked: check failed", "reloaded: reload failed",
                    "broken: render failed", "reloaded: reload after rollback failed too",
                    "checked: trying again in"):
        assert output.count(f"ERROR resource {failure}") + output.count(
            f"INFO resource {failure}") == 1, f"{failure}:\n{output}"
    assert output.count("DEBUG resource broken: render failed") >= 3, output
    assert w.proc.poll() is None


def test_a_recovery_that_finds_the_file_as_it_was_is_said(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A bad value fails the render (ERROR); the value put back renders the file already in
    place. That "up to date" was a DEBUG line (a change its file does not show), so the
    journal's last word on the resource stayed the failure while it was well again."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app",
                   "{% if getv('/k/v') == 'bad' %}{{ getv('/k/missing') }}{% endif %}"
                   + TEMPLATE, f'dest = "{dest}"\nkeys = ["/k"]\n')
    w = start(watchers, tmp_path, etcd, prefix, None, "--log-level", "debug",
              "--log-format", "json")

    def records() -> list[dict[str, Any]]:
        return [r for r in (json.loads(line) for line in w.output().splitlines()
                            if line.startswith("{")) if r.get("resource") == "app"]

    wait_for(lambda: read(dest) == "value=1\n", 20, what="first render")
    c.put(prefix + "/k/v", "bad")
    wait_for(lambda: any(r.get("outcome") == "failed" for r in records()), 20,
             what="the failure")
    c.put(prefix + "/k/v", "1")
    wait_for(lambda: records()[-1].get("outcome") == "unchanged", 20, what="the recovery")
    failed = max(i for i, r in enumerate(records()) if r.get("outcome") == "failed")
    after = [r for r in records()[failed + 1:] if r.get("outcome") == "unchanged"]
    assert after and after[0]["level"] == "info", after
    assert read(dest) == "value=1\n"
    assert w.stop() == 0


def test_a_failed_reload_back_is_said_again_when_the_resource_fails_anew(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A reload that fails, and fails again reloading the previous file, leaves the service
    on neither file: "reload after rollback failed too" is an ERROR. It was rate-limited per
    resource for 5 minutes whatever happened between, so a resource that recovered and
    failed that way again within 5 minutes said its new failure, and hid that the reload
    back failed too (a DEBUG line)."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest, flag, live = tmp_path / "out.conf", tmp_path / "reload-fails", tmp_path / "live"
    write_resource(tmp_path / "cd", "app", TEMPLATE,
                   f'dest = "{dest}"\nkeys = ["/k"]\n'
                   f'reload_cmd = ["sh", "-c", "test ! -e {flag} && cp {dest} {live}"]')
    w = start(watchers, tmp_path, etcd, prefix, None, "--log-level", "debug",
              "--log-format", "json")

    def back_failed() -> list[str]:
        return [r["level"] for r in (json.loads(line) for line in w.output().splitlines()
                                     if line.startswith("{"))
                if "reload after rollback failed too" in r.get("message", "")]

    wait_for(lambda: read(live) == "value=1\n", 20, what="first render and reload")
    first_of_each = []
    for value in ("2", "3"):
        before = len(back_failed())
        flag.touch()
        c.put(prefix + "/k/v", value)
        wait_for(lambda: len(back_failed()) > before,  # noqa: B023 (waited for here)
                 20, what="the reload back failing")
        first_of_each.append(back_failed()[before])
        flag.unlink()
        wait_for(lambda: read(live) == f"value={value}\n", 45, what="recovered")  # noqa: B023
    assert first_of_each == ["error", "error"], back_failed()
