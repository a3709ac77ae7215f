"""Exec mode against real child processes that log every signal they get to a file."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from confsync.errors import ResourceError
from confsync.ops.supervisor import ExecPolicy, Supervisor
from confsync.outcome import FAILED, UPDATED, Outcome
from confsync.resources import Resource
from tests.support.etcd_server import free_port

CHILD = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    mode = sys.argv[2] if len(sys.argv) > 2 else "serve"
    log.write(f"start {os.getpid()} {time.monotonic()}\\n")
    # As `confsync watch` starts it: every signal confsync handles is caught there, so at
    # the default here. (Started from a test under `nohup`, SIGHUP would be inherited ignored.)
    for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    if mode.startswith("exit"):
        sys.exit(int(mode[4:]))
    while mode == "gated" and not os.path.exists(sys.argv[1] + ".go"):  # still starting
        time.sleep(0.01)
    def on(sig, frame):
        log.write(f"signal {signal.Signals(sig).name}\\n")
        if sig == signal.SIGTERM:
            sys.exit(7)
    for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(s, on)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode.startswith("stubborn") else on)
    if mode in ("family", "stubborn-family"):  # a helper in its group that ignores SIGTERM
        helper = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                   "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                   "print('helper', flush=True); time.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
        helper.stdout.readline()
        log.write(f"helper {helper.pid}\\n")
    if mode == "orphans":  # leave two orphans behind that exit soon: they become zombies
        os.system("(sleep 0.1 &) ; (sleep 0.1 &)")
    log.write("ready\\n")
    while True:
        time.sleep(0.05)
""")


@pytest.fixture(autouse=True)
def no_leftover_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Children have their own process group: a failing test must not leave one running."""
    started: list[Supervisor] = []
    original = Supervisor.start

    def start(self: Supervisor) -> None:
        started.append(self)
        original(self)

    monkeypatch.setattr(Supervisor, "start", start)
    yield
    for sup in started:
        if sup.proc is not None and sup.proc.poll() is None:
            sup.proc.kill()
            sup.proc.wait()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def child(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script, tmp_path / "child.log"


def policy(script: Path, log: Path, mode: str = "serve", **kw: object) -> ExecPolicy:
    return ExecPolicy(argv=(sys.executable, str(script), str(log), mode), **kw)  # type: ignore[arg-type]


def test_start_reload_forward_stop(child: tuple[Path, Path]) -> None:
    script, log = child
    sup = Supervisor(policy(script, log),
                     env={**os.environ, "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1"})
    assert sup.reload() is False, "nothing to reload before the first render"
    sup.ready(5)
    wait_for(lambda: "ready" in lines(log))
    assert sup.running and sup.pid is not None
    assert "NOTIFY_SOCKET" not in Path(f"/proc/{sup.pid}/environ").read_bytes().decode()

    web = Resource(name="web", source=Path("/x/w.toml"), src=Path("/x/t"),
                   dest=Path("/x/w.cfg"), keys=("/a",), prefix="")
    own = Resource(name="own", source=Path("/x/o.toml"), src=Path("/x/t"),
                   dest=Path("/x/o.cfg"), keys=("/a",), prefix="", reload_cmd=("true",))
    sup.batch_applied(6, ["/a/x"], [Outcome(web, UPDATED), Outcome(web, UPDATED)])
    wait_for(lambda: "signal SIGHUP" in lines(log))
    sup.batch_applied(7, ["/a/x"], [Outcome(own, UPDATED),
                                    Outcome(web, FAILED, ResourceError("web", "check", "x"))])
    assert sup.forward(signal.SIGUSR1)
    wait_for(lambda: "signal SIGUSR1" in lines(log))
    assert lines(log).count("signal SIGHUP") == 1, "one reload per batch, none for others"

    for _ in range(5):
        sup.heartbeat()
    assert sup.restarts == 0
    assert sup.stop(timeout=5) == 7, "confsync exits with the child's status"
    assert lines(log)[-1] == "signal SIGTERM"
    assert not sup.running


def test_stop_kills_a_child_that_ignores_sigterm(child: tuple[Path, Path]) -> None:
    script, log = child
    sup = Supervisor(policy(script, log, "stubborn"))
    sup.start()
    wait_for(lambda: "ready" in lines(log))
    start = time.monotonic()
    assert sup.stop(timeout=0.5) == 128 + signal.SIGKILL
    assert 0.4 < time.monotonic() - start < 3


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # its new parent reaps it
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("mode", "status"), [("stubborn-family", 128 + signal.SIGKILL),
                                              ("family", 7)])
def test_stop_takes_the_childs_process_group_along(child: tuple[Path, Path], mode: str,
                                                   status: int) -> None:
    """A helper the child started in its group used to outlive confsync: SIGKILL after
    stop_timeout reached the child alone, and a child that exited on SIGTERM without passing
    it on left the helper running (outside a container or cgroup, for good)."""
    script, log = child
    sup = Supervisor(policy(script, log, mode))
    sup.start()
    wait_for(lambda: "ready" in lines(log))
    helper = int(next(x for x in lines(log) if x.startswith("helper")).split()[1])
    try:
        start = time.monotonic()
        assert sup.stop(timeout=1) == status
        assert time.monotonic() - start < 4
        wait_for(lambda: _gone(helper), 2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)


def test_the_child_gets_its_stop_signal_as_confsync_starts_stopping(
        child: tuple[Path, Path]) -> None:
    """The daemon's `stopping` event sends it, once; stop() (after the daemon's own shutdown,
    which may take seconds) only waits, from the same start: the child's grace is not cut."""
    script, log = child
    sup = Supervisor(policy(script, log))
    sup.start()
    wait_for(lambda: "ready" in lines(log))
    sup.stopping()
    wait_for(lambda: "signal SIGTERM" in lines(log), 3)
    assert sup.stop(timeout=5) == 7
    assert lines(log).count("signal SIGTERM") == 1


def test_restart_with_backoff_then_crash_loop(child: tuple[Path, Path]) -> None:
    script, log = child
    sup = Supervisor(policy(script, log, "exit3", restart_delay=0.1, restart_delay_max=0.4,
                            crash_limit=5, crash_window=30))
    sup.start()
    deadline = time.monotonic() + 10
    while sup.gave_up is None and time.monotonic() < deadline:
        sup.poll()
        time.sleep(0.01)
    assert sup.gave_up is not None and "crash loop" in sup.gave_up
    starts = [float(line.split()[2]) for line in lines(log) if line.startswith("start")]
    assert len(starts) == 5 and sup.restarts == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.1, 0.2, 0.4, 0.4 (capped), plus process start-up time each
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.4), strict=True):
        assert delay <= gap < delay + 0.5, gaps
    sup.poll()
    assert len([x for x in lines(log) if x.startswith("start")]) == 5, "no restart after give-up"
    assert sup.stop() == 3


def test_a_long_lived_child_resets_backoff(child: tuple[Path, Path]) -> None:
    script, log = child
    now = [0.0]
    sup = Supervisor(policy(script, log, "exit0", restart_delay=1, crash_limit=99,
                            stable_after=10), clock=lambda: now[0])
    sup.start()
    for uptime, expected_delay in ((1, 1), (1, 2), (1, 4), (20, 1)):
        now[0] += uptime
        sup.proc.wait(5)  # type: ignore[union-attr]
        sup.poll()
        assert sup._restart_at == pytest.approx(now[0] + expected_delay)
        now[0] = sup._restart_at
        sup.poll()
        assert sup.running
    sup.stop()


def test_a_reload_due_while_the_child_starts_waits_until_it_handles_the_signal(
        child: tuple[Path, Path]) -> None:
    """SIGHUP's default action is to terminate: sent before the child installed its handler
    (HAProxy parsing its configuration), a reload killed it, and enough such batches during a
    rolling deploy made a crash loop that ended confsync."""
    from confsync.ops.metrics import Metrics

    script, log = child
    sup = Supervisor(policy(script, log, "gated"))
    metrics = Metrics()
    metrics.track_exec(sup)
    metrics.ready(1)
    web = Resource(name="web", source=Path("/x/w.toml"), src=Path("/x/t"),
                   dest=Path("/x/w.cfg"), keys=("/a",), prefix="")
    sup.start()
    wait_for(lambda: any(x.startswith("start") for x in lines(log)))  # no handler yet
    sup.batch_applied(2, ["/a/x"], [Outcome(web, UPDATED)])
    time.sleep(0.1)  # a signal sent would have killed it by now
    sup.poll()
    assert sup.running, f"the reload killed the starting child: {lines(log)}"
    assert sup.reload_held
    assert any("reload waits" in r for r in metrics.readiness()[1]["reasons"])
    Path(f"{log}.go").touch()
    deadline = time.monotonic() + 5
    while "signal SIGHUP" not in lines(log) and time.monotonic() < deadline:
        sup.poll()
        time.sleep(0.02)
    assert lines(log).count("signal SIGHUP") == 1, "the held reload is delivered, once"
    assert sup.running and sup.restarts == 0 and not sup.reload_held
    assert not any("reload waits" in r for r in metrics.readiness()[1]["reasons"])
    assert sup.stop(timeout=5) == 7


def test_a_restart_that_cannot_start_backs_off(tmp_path: Path) -> None:
    """After a long-lived child, each failed start counted the old child's uptime: the backoff
    was reset at every attempt (1 s, 1 s, 1 s ...) instead of growing."""
    binary = tmp_path / "svc"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    now = [0.0]
    sup = Supervisor(ExecPolicy(argv=(str(binary),), restart_delay=1, crash_limit=99,
                                stable_after=10), clock=lambda: now[0])
    sup.start()
    now[0] += 20
    sup.proc.wait(5)  # type: ignore[union-attr]
    sup.poll()
    binary.unlink()  # mid-upgrade
    for expected_delay in (1, 2, 4):
        assert sup._restart_at == pytest.approx(now[0] + expected_delay)
        now[0] = sup._restart_at
        sup.poll()
        assert not sup.running and sup.last_status == 127
    sup.stop()


def test_missing_binary_gives_up_at_once(tmp_path: Path) -> None:
    sup = Supervisor(ExecPolicy(argv=(str(tmp_path / "no-such-binary"),)))
    sup.ready(1)
    assert sup.gave_up is not None and "cannot start" in sup.gave_up
    assert sup.stop() == 127


DRIVER = textwrap.dedent("""
    import json, os, signal, sys, time
    import psutil
    from confsync import children
    from confsync.ops.supervisor import ExecPolicy, Supervisor
    script, log, reap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    sup = Supervisor(ExecPolicy(argv=(sys.executable, script, log, "orphans"),
                                forward_signals=(signal.SIGUSR2,)))
    sup.install_signal_handlers()
    sup.start()
    while "ready" not in (open(log).read() if os.path.exists(log) else ""):
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGUSR2)     # forwarded by the handler
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        sup.poll()
        if reap:  # what the watch and register loops do each tick as PID 1
            children.reap_orphans()
    me = psutil.Process()
    zombies = [c.pid for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
    status = sup.stop(timeout=5)
    print(json.dumps({"pid": os.getpid(), "zombies": zombies, "status": status}))
""")


def _run_as_init(tmp_path: Path, script: Path, log: Path, reap: bool) -> dict[str, object]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    argv = [sys.executable, str(driver), str(script), str(log), "1" if reap else "0"]
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if shutil.which("unshare") and subprocess.run([*prefix, "true"],
                                                  capture_output=True).returncode == 0:
        argv = prefix + argv
    else:
        pytest.skip("cannot create a PID namespace here (unshare --pid needs CAP_SYS_ADMIN)")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_reaps_orphans_as_pid1_and_forwards_signals(child: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    script, log = child
    reaping = _run_as_init(tmp_path, script, log, reap=True)
    assert reaping["pid"] == 1
    assert reaping["zombies"] == []
    assert reaping["status"] == 7
    assert "signal SIGUSR2" in lines(log)
    # the same without reaping leaves the orphans as zombies: the check above can fail
    not_reaping = _run_as_init(tmp_path, script, tmp_path / "second.log", reap=False)
    assert len(not_reaping["zombies"]) == 2  # type: ignore[arg-type]


def test_policy_from_config_and_environment(tmp_path: Path) -> None:
    from confsync.errors import ConfigError
    from confsync.ops.supervisor import policy_from_settings
    from confsync.settings import load_settings

    config = tmp_path / "confsync.toml"
    config.write_text('[exec]\ncommand = "haproxy -W -db -f \'/etc/haproxy/my cfg\'"\n'
                      'reload_signal = "usr2"\nforward_signals = ["SIGUSR1", "HUP"]\n'
                      'crash_window = "2m"\n')
    settings = load_settings({"config": str(config)}, {"CONFSYNC_EXEC_STOP_TIMEOUT": "3s",
                                                       "CONFSYNC_EXEC_CRASH_LIMIT": "3"})
    p = policy_from_settings(settings.exec)
    assert p.argv == ("haproxy", "-W", "-db", "-f", "/etc/haproxy/my cfg")
    assert p.reload_signal == signal.SIGUSR2 and p.stop_signal == signal.SIGTERM
    assert p.forward_signals == (signal.SIGUSR1, signal.SIGHUP)
    assert (p.stop_timeout, p.crash_limit, p.crash_window) == (3.0, 3, 120.0)
    for name, bad in (("CONFSYNC_EXEC_CRASH_LIMIT", "0"), ("CONFSYNC_EXEC_STOP_SIGNAL", "SIGFOO"),
                      ("CONFSYNC_EXEC_COMMAND", "haproxy '-f")):
        with pytest.raises(ConfigError, match=name):
            load_settings({"config": str(config)}, {name: bad})


def test_a_child_that_never_handles_its_reload_signal_gets_it_after_stable_after(
        child: tuple[Path, Path]) -> None:
    """Held for good, the new files never reached a service that takes no reload signal: after
    stable_after it is sent as it always was (it ends the child, restarted on the new files)."""
    script, log = child
    sup = Supervisor(policy(script, log, "gated", stable_after=3.0, restart_delay=0.05))
    web = Resource(name="web", source=Path("/x/w.toml"), src=Path("/x/t"),
                   dest=Path("/x/w.cfg"), keys=("/a",), prefix="")
    sup.start()
    wait_for(lambda: any(x.startswith("start") for x in lines(log)))  # no handler, ever
    sup.batch_applied(2, ["/a/x"], [Outcome(web, UPDATED)])
    sup.poll()
    assert sup.running and sup.reload_held  # not before stable_after
    deadline = time.monotonic() + 10
    while sup.restarts == 0 and time.monotonic() < deadline:
        sup.poll()
        time.sleep(0.02)
    assert sup.restarts == 1 and sup.last_status == 128 + signal.SIGHUP
    assert not sup.reload_held
    sup.stop(timeout=2)


def test_a_sets_first_render_does_not_restart_a_child_waiting_out_its_backoff(
        child: tuple[Path, Path]) -> None:
    """A SIGHUP that changes prefixes renders its set anew (`ready` again): a crashed child
    was started at once, uncounted, past its restart backoff and crash_limit."""
    script, log = child
    sup = Supervisor(policy(script, log, "exit3", restart_delay=30.0))
    sup.ready(1)
    wait_for(lambda: sup.proc is not None and sup.proc.poll() is not None)
    sup.poll()  # its death: a restart in 30 s
    assert not sup.running
    sup.ready(2)  # the reloaded set's first render
    assert not sup.running and sup.restarts == 0
    assert sum(x.startswith("start") for x in lines(log)) == 1


def test_a_child_that_dies_on_its_own_takes_its_group_along_before_the_restart(
        child: tuple[Path, Path]) -> None:
    """A helper the crashed child started kept running (holding the service's port, so every
    restart failed to bind, and the crash loop ended confsync): it gets stop_signal, SIGKILL
    after stop_timeout, and only then is the child reaped and restarted."""
    script, log = child
    sup = Supervisor(policy(script, log, "stubborn-family", stop_timeout=0.5,
                            restart_delay=0.05))
    sup.start()
    wait_for(lambda: "ready" in lines(log))
    helper = int(next(x for x in lines(log) if x.startswith("helper")).split()[1])
    try:
        assert sup.pid is not None
        os.kill(sup.pid, signal.SIGKILL)  # the crash
        wait_for(lambda: (sup.poll(), not sup.running)[1])  # dead, while its group is cleaned
        deadline = time.monotonic() + 10
        while sup.restarts == 0 and time.monotonic() < deadline:
            helper_alive = not _gone(helper)
            sup.poll()
            assert not (helper_alive and sup.restarts), "restarted beside the old helper"
            time.sleep(0.02)
        assert sup.restarts == 1, "restarted once its group was gone"
        assert _gone(helper), "the helper outlived its crashed child"
        assert sup.last_status == 128 + signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)
        sup.stop(timeout=2)


def _haproxy_config(path: Path, port: int, version: int) -> None:
    """A config that answers `v<version>`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("global\n  master-worker\ndefaults\n  mode http\n  timeout client 5s\n"
                   "  timeout server 5s\n  timeout connect 1s\nfrontend f\n"
                   f"  bind 127.0.0.1:{port}\n"
                   f"  http-request return status 200 content-type text/plain string v{version}\n")
    os.replace(tmp, path)


def _padding(path: Path) -> None:
    """A second file of 3,000 regex ACLs, read after the first: each (re)load takes tens of
    milliseconds, as a real config's does, and its reading shows the first one was read."""
    acls = "".join(f"  acl a{i} path_reg ^/x{i}[a-z]+$\n" for i in range(3000))
    path.write_text(f"backend padding\n{acls}")


def _reading(pid: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path)
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


def _served(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except OSError as exc:
        return str(exc)
    finally:
        conn.close()


def _disposition(pid: int, signum: int) -> str:
    """'caught', 'ignored' or 'default' (the signal's action in `pid` right now)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    bit = 1 << (signum - 1)
    if int(fields["SigCgt"], 16) & bit:
        return "caught"
    return "ignored" if int(fields["SigIgn"], 16) & bit else "default"


@pytest.mark.parametrize("phase", ["ignored", "default"])
def test_a_reload_due_while_haproxy_reloads_is_not_lost(haproxy_binary: str, tmp_path: Path,
                                                        phase: str) -> None:
    """HAProxy's master re-executes for a reload with the signals blocked, then sets them to
    SIG_IGN (which discards a pending one) before it catches them again (measured on 2.6). A
    reload signal sent meanwhile was lost: one counted as handled because it was ignored
    (`ignored`), or a held one sent at the next poll because the long-lived child "never
    handles it" (`default`). HAProxy kept serving the previous file until the next change."""
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    _haproxy_config(cfg, port, 0)
    padding = tmp_path / "padding.cfg"
    _padding(padding)
    offset = [0.0]  # the child has run for long (stable_after passed) once this is set
    sup = Supervisor(ExecPolicy(argv=(haproxy_binary, "-W", "-db", "-f", str(cfg),
                                      "-f", str(padding)),
                                reload_signal=signal.SIGUSR2),
                     clock=lambda: time.monotonic() + offset[0])
    sup.start()
    try:
        wait_for(lambda: _served(port) == "v0", timeout=10)
        offset[0] = 3600.0
        pid = sup.pid
        assert pid is not None

        def served(version: int) -> bool:
            """Polls as the daemon's loop does until HAProxy serves `version` and its master
            is done reloading (it catches the signal again, nothing held), 5 s at most."""
            deadline = time.monotonic() + 5
            while (_served(port) != f"v{version}" or sup.reload_held
                   or _disposition(pid, signal.SIGUSR2) != "caught") and (
                    time.monotonic() < deadline):
                sup.poll()
                time.sleep(0.02)
            return _served(port) == f"v{version}"

        caught = 0
        for version in range(1, 11, 2):
            _haproxy_config(cfg, port, version)
            sup.reload()
            # The phase, and for `default` (re-executed, loading) the first file read already:
            # the master no longer takes what is written now for the reload under way.

            def there() -> bool:
                return _disposition(pid, signal.SIGUSR2) == phase and (
                    phase == "ignored" or _reading(pid, padding))

            deadline = time.monotonic() + 2
            while not there() and time.monotonic() < deadline:
                time.sleep(0.0005)
            if there():
                caught += 1
                version += 1
                _haproxy_config(cfg, port, version)  # the next batch, mid-reload
                sup.reload()
            assert served(version), (
                f"the reload sent while HAProxy's master had SIGUSR2 {phase} was lost")
            assert sup.running and not sup.reload_held
        if not caught:
            pytest.skip(f"never saw the master with SIGUSR2 {phase} (machine too loaded)")
    finally:
        sup.stop(timeout=5)


STARTS_SIGNALLED = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from confsync.ops.supervisor import ExecPolicy, Supervisor
    out = sys.argv[1]
    # A busy thread and a long switch interval: after the child runs, the loop thread waits
    # for the GIL inside Popen, as on a loaded host, so the child's signal lands there.
    sys.setswitchinterval(0.05)
    busy = True
    def spin():
        while busy:
            pass
    threading.Thread(target=spin, daemon=True).start()
    got = []
    for i in range(3):
        mark = f"{out}.{i}"
        sup = Supervisor(ExecPolicy(argv=("sh", "-c", f"trap 'echo usr2 > {mark}; exit 0' "
                                          "USR2; kill -USR2 $PPID; sleep 3 & wait"),
                                    forward_signals=(signal.SIGUSR2,), stop_timeout=1))
        sup.install_signal_handlers()
        sup.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not os.path.exists(mark):
            time.sleep(0.01)
        got.append(os.path.exists(mark))
        sup.stop()
    busy = False
    print(json.dumps(got))
""")


def test_a_forward_signal_while_the_child_starts_reaches_it(tmp_path: Path) -> None:
    """The child runs before Popen has returned its pid: a forward signal then (the child
    signalling confsync as it starts, an operator's `kill -USR2` right after a restart) was
    dropped, no child being known yet (a restart: sent to the dead one). It is sent once the
    child is known."""
    driver = tmp_path / "driver.py"
    driver.write_text(STARTS_SIGNALLED)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, str(driver), str(tmp_path / "got")],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, True, True], done.stderr


def test_a_sets_first_render_does_not_start_a_second_child_beside_a_dead_one(
        child: tuple[Path, Path]) -> None:
    """A child that died on its own stays unreaped while its group is cleaned up (up to
    stop_timeout). A SIGHUP's first render of a new set then (`ready`) started a second child
    at once: no backoff, not counted, and the first one never reaped (a zombie for good)."""
    script, log = child
    sup = Supervisor(policy(script, log, "stubborn-family", stop_timeout=2.0,
                            restart_delay=0.05))
    sup.start()
    wait_for(lambda: "ready" in lines(log))
    helper = int(next(x for x in lines(log) if x.startswith("helper")).split()[1])
    first = sup.pid
    try:
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (sup.poll(), not sup.running)[1])  # its group being cleaned up
        sup.ready(2)
        assert sup.pid == first and sup.restarts == 0, "a second child beside the dead one"
        wait_for(lambda: (sup.poll(), sup.restarts == 1)[1], timeout=10)
        assert not psutil.pid_exists(first) or \
            psutil.Process(first).status() != psutil.STATUS_ZOMBIE
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)
        sup.stop(timeout=2)
