"""The probe step of the Syncer: a file already in place gets its target asked, not reloaded,
and a target found again reloads only when it may run an older file. The reload step and the
HAProxy plugin stay apart (neither imports the other)."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import pytest

import confsync
from confsync.haproxy import control, runtime
from confsync.haproxy.master_cli import MasterStatus
from confsync.haproxy.runtime import LiveServer, RuntimeApplyFailed, Worker
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.mirror import Mirror
from confsync.outcome import UNCHANGED, UPDATED
from confsync.plugins import PluginConfig
from confsync.processes import boot_clock, started_at
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Snapshot
from confsync.sync import Syncer
from confsync.targets import Liveness, Probe, ReloadFailed, ReloadKind, ReloadResult


class FakeTarget:
    """Answers probes with `liveness`; a reload finds it running unless `down`."""

    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
        self.reloads = 0
        self.probes: list[float | None] = []
        self.compared: list[bool] = []

    def key(self) -> Hashable:
        return "fake"

    def probe(self, since: float | None, quick: bool = False, compare: bool = False) -> Probe:
        self.probes.append(since)
        self.compared.append(compare)
        return Probe(self.liveness, f"fake {self.liveness.value}")

    def reload(self, previous: bytes | None, content: bytes | None) -> ReloadResult:
        if self.liveness is Liveness.DOWN:
            return ReloadResult(ReloadKind.NO_TARGET, "nothing runs")
        self.reloads += 1
        return ReloadResult(ReloadKind.CONFIRMED, "reloaded")

    def may_skip_check(self, previous: bytes, content: bytes, checked: bytes) -> bool:
        return False


def _setup(tmp_path: Path, liveness: Liveness,
           probe: bool = True) -> tuple[Syncer, Resource, FakeTarget, Mirror]:
    (tmp_path / "t.tmpl").write_text("{% for kv in gets('/pool/*') %}server {{ kv.value }}\n"
                                     "{% endfor %}")
    res = Resource(name="pool", source=tmp_path / "pool.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "pool.cfg", keys=("/pool",), prefix="",
                   reload_cmd=("true",))
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/pool/a": b"10.0.0.1:80"}))
    syncer = Syncer(Renderer(tmp_path), mirror, probe=probe)
    target = FakeTarget(liveness)
    syncer._targets[res] = target
    return syncer, res, target, mirror


@pytest.mark.parametrize("liveness", [x for x in Liveness if x is not Liveness.STALE])
def test_a_current_file_at_the_start_is_probed_never_reloaded(tmp_path: Path,
                                                              liveness: Liveness) -> None:
    syncer, res, target, _ = _setup(tmp_path, liveness)
    res.dest.write_text("server 10.0.0.1:80\n")
    (outcome,) = syncer.apply([res])
    assert outcome.status == UNCHANGED and target.reloads == 0 and len(target.probes) == 1
    expected = {Liveness.DOWN: ReloadKind.NO_TARGET, Liveness.UNKNOWN: None}.get(
        liveness, ReloadKind.IN_STEP)
    assert (outcome.reload.kind if outcome.reload else None) == expected
    assert (res.name in syncer.not_running) == (liveness is Liveness.DOWN)
    syncer.apply([res])  # asked once; later applies ask only while it is down
    assert len(target.probes) == (2 if liveness is Liveness.DOWN else 1)


def test_a_target_that_loaded_before_the_file_was_written_is_reloaded_in_full(
        tmp_path: Path) -> None:
    """STALE (say, confsync was killed between installing and reloading): a reload, with no
    previous file named (what it runs is not the previous file: no runtime-API shortcut)."""
    syncer, res, target, _ = _setup(tmp_path, Liveness.STALE)
    res.dest.write_text("server 10.0.0.1:80\n")
    seen: list[bytes | None] = []
    real = target.reload

    def reload(previous: bytes | None, content: bytes | None) -> ReloadResult:
        seen.append(previous)
        return real(previous, content)

    target.reload = reload  # type: ignore[method-assign]
    (outcome,) = syncer.apply([res])
    assert outcome.status == UPDATED and outcome.reload is not None
    assert outcome.reload.kind is ReloadKind.CONFIRMED and seen == [None]
    target.liveness = Liveness.RUNNING
    (outcome,) = syncer.apply([res])  # asked once: no more reloads
    assert outcome.status == UNCHANGED and target.reloads == 1


def test_once_asks_nothing(tmp_path: Path) -> None:
    syncer, res, target, _ = _setup(tmp_path, Liveness.DOWN, probe=False)
    res.dest.write_text("server 10.0.0.1:80\n")
    (outcome,) = syncer.apply([res])
    assert outcome.status == UNCHANGED and outcome.reload is None and target.probes == []


def test_an_outage_costs_no_reload_when_the_target_started_after_the_file(
        tmp_path: Path) -> None:
    syncer, res, target, mirror = _setup(tmp_path, Liveness.DOWN)
    res.dest.write_text("server 10.0.0.1:80\n")
    syncer.apply([res])
    mirror.load(Snapshot(2, {"/pool/b": b"10.0.0.2:80"}))  # changed while nothing runs
    before = boot_clock()
    (written,) = syncer.apply([res])
    assert written.status == UPDATED and written.reload is not None
    assert written.reload.kind is ReloadKind.NO_TARGET and res.name in syncer.not_running
    target.liveness = Liveness.STARTED_SINCE
    (back,) = syncer.apply([res])
    assert back.status == UNCHANGED and back.reload is not None
    assert back.reload.kind is ReloadKind.IN_STEP and target.reloads == 0
    assert target.probes[-1] is not None and target.probes[-1] >= before  # since the install
    assert res.name not in syncer.not_running


def test_a_target_that_may_run_an_older_file_is_reloaded(tmp_path: Path) -> None:
    """Found again, but started before the file was in place (it began starting while
    confsync found nothing, or its socket did not answer): reload, as before."""
    syncer, res, target, mirror = _setup(tmp_path, Liveness.DOWN)
    mirror.load(Snapshot(2, {"/pool/b": b"10.0.0.2:80"}))
    syncer.apply([res])
    for liveness in (Liveness.RUNNING, Liveness.UNKNOWN):
        syncer.not_running.add(res.name)
        target.liveness = liveness
        reloads = target.reloads
        (back,) = syncer.apply([res])
        assert back.status == UPDATED and back.reload is not None
        assert back.reload.kind is ReloadKind.CONFIRMED and target.reloads == reloads + 1
        assert res.name not in syncer.not_running


def test_check_targets_reports_a_stop_and_a_start(tmp_path: Path) -> None:
    syncer, res, target, _ = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")
    syncer.apply([res])
    assert syncer.check_targets([res]) == ([], [])
    target.liveness = Liveness.DOWN
    down, up = syncer.check_targets([res])
    assert [r.name for r, _ in down] == ["pool"] and up == []
    assert res.name in syncer.not_running
    assert syncer.check_targets([res]) == ([], [])  # still down: reported once
    target.liveness = Liveness.STARTED_SINCE
    assert syncer.check_targets([res]) == ([], [res])  # the next apply settles it
    assert target.reloads == 0


def test_only_the_first_look_compares_what_runs_with_the_file(tmp_path: Path) -> None:
    """A comparison may cost more than a look (HAProxy: `show servers state`): the apply's
    probe of a file found in place asks for it, the looks between applies do not, nor the
    probe of a target found again (it is reloaded whatever it runs)."""
    syncer, res, target, _ = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")
    syncer.apply([res])
    syncer.check_targets([res])
    assert target.compared == [True, False]
    syncer.not_running.add(res.name)
    syncer.apply([res])
    assert target.compared == [True, False, False] and target.reloads == 1


def test_compare_targets_finds_drift_once_and_the_next_apply_makes_the_file_live(
        tmp_path: Path) -> None:
    """Between applies the daemon asks, every few seconds, whether what a target runs is its
    file (HAProxy's servers changed by hand). One found STALE is reported once; the next apply
    of its unchanged file asks it as at a first look and, still STALE, makes the file live
    (a reload of a target whose previous file is unknown); then it is compared again."""
    syncer, res, target, _ = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")
    syncer.apply([res])
    assert syncer.compare_targets([res]) == [] and target.compared == [True, True]
    target.liveness = Liveness.STALE
    [(found, probe)] = syncer.compare_targets([res])
    assert found is res and probe.liveness is Liveness.STALE
    assert syncer.compare_targets([res]) == []  # said once, until an apply took it
    assert target.compared == [True, True, True]
    (outcome,) = syncer.apply([res])
    assert outcome.status == UPDATED and outcome.reload is not None
    assert outcome.reload.kind is ReloadKind.CONFIRMED and target.reloads == 1
    target.liveness = Liveness.RUNNING
    assert syncer.compare_targets([res]) == [] and target.compared[-1] is True
    # Nothing asked of a target not running or owing a reload: the apply path has those.
    syncer.not_running.add(res.name)
    calls = len(target.compared)
    assert syncer.compare_targets([res]) == [] and len(target.compared) == calls


def _controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[control.HAProxyController, Resource, list[tuple[object, ...]]]:
    """An HAProxyController (runtime strategy) whose master answers (`show proc`), on a file
    with a pool; the calls of `reconcile` and of a full reload are recorded, nothing is sent
    anywhere."""
    settings = HAProxySettings(master_socket=tmp_path / "master.sock",
                               strategy=Strategy.RUNTIME)
    resource = Resource(name="haproxy", source=tmp_path / "haproxy.toml", src=tmp_path / "t",
                        dest=tmp_path / "haproxy.cfg", keys=("/x",), prefix="",
                        plugin=PluginConfig("haproxy", settings))
    resource.dest.write_text(f"global\n    stats socket {tmp_path / 'admin.sock'} level admin\n"
                             "backend be_web\n    server a 10.0.0.1:80 weight 10 check\n")
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(control, "show_proc", lambda *a, **k: MasterStatus(1, 0, 0, None))
    monkeypatch.setattr(control, "reconcile", lambda admin, old, new, parked, **_: (
        calls.append(("reconcile", old)) or ["set server be_web/a addr 10.0.0.1 port 80"]))
    # (one worker took the pass and serves on: no reload by someone else meanwhile)
    monkeypatch.setattr(control, "worker_identity", lambda admin: Worker(7, 100))
    monkeypatch.setattr(control, "worker_left", lambda *a: None)
    monkeypatch.setattr(control.HAProxyController, "_reload", lambda self, *a: (
        calls.append(("reload",)) or ReloadResult(ReloadKind.CONFIRMED, "reloaded")))
    return control.HAProxyController(resource, settings), resource, calls


def test_runtime_probe_compares_haproxys_servers_and_brings_them_in_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    controller, resource, calls = _controller(tmp_path, monkeypatch)
    live: dict[str, dict[str, LiveServer]] = {"be_web": {}}
    monkeypatch.setattr(runtime, "live_servers", lambda admin: live)
    content = resource.dest.read_bytes()
    assert controller.probe(None).liveness is Liveness.RUNNING  # no comparison asked
    found = controller.probe(None, compare=True)
    assert found.liveness is Liveness.STALE
    assert "be_web/a is not in HAProxy" in found.detail
    done = controller.reload(None, content)  # the reload that follows: runtime, no reload
    assert done.kind is ReloadKind.RUNTIME and calls == [("reconcile", None)]
    # Only for the bytes compared, and only right after: else a full reload, as before.
    controller.probe(None, compare=True)
    controller.reload(None, content + b"\n")
    controller.reload(None, content)
    assert calls[1:] == [("reload",), ("reload",)]
    # A server at another address: STALE; moved at runtime when it serves nothing now (in
    # maintenance), a full reload when it is the only one serving (a move's steps take it out
    # of the pool).
    live["be_web"]["a"] = LiveServer("10.0.0.9", 80, 10, maint=True, drain=False)
    found = controller.probe(None, compare=True)
    assert found.liveness is Liveness.STALE
    assert "HAProxy runs be_web/a at 10.0.0.9:80, the file has 10.0.0.1:80" in found.detail
    controller.reload(None, content)
    assert calls[-1] == ("reconcile", None)
    live["be_web"]["a"] = LiveServer("10.0.0.9", 80, 10, maint=False, drain=False)
    assert controller.probe(None, compare=True).liveness is Liveness.STALE
    controller.reload(None, content)
    assert calls[-1] == ("reload",)
    # In step but for admin state (disabled by hand): RUNNING.
    live["be_web"]["a"] = LiveServer("10.0.0.1", 80, 1, maint=True, drain=False)
    assert controller.probe(None, compare=True).liveness is Liveness.RUNNING
    # A backend HAProxy lacks: STALE, and a full reload.
    live.clear()
    found = controller.probe(None, compare=True)
    assert found.liveness is Liveness.STALE and "be_web is not in HAProxy" in found.detail
    controller.reload(None, content)
    assert calls[-1] == ("reload",)

    def fails(admin: object) -> object:
        raise RuntimeApplyFailed("admin socket: connection refused")

    monkeypatch.setattr(runtime, "live_servers", fails)  # HAProxy cannot be asked: as before
    assert controller.probe(None, compare=True).liveness is Liveness.RUNNING


def test_a_file_with_a_server_line_the_model_cannot_read_is_not_compared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server at a host name is no server of the model: HAProxy's `web1` would be one the
    file lacks, deleted by the repair of the comparison the daemon makes every few seconds
    (and brought back by the next reload)."""
    controller, resource, _ = _controller(tmp_path, monkeypatch)
    resource.dest.write_text(resource.dest.read_text()
                             + "    server web1 web1.example.internal:80 check\n")
    live = {"be_web": {"a": LiveServer("10.0.0.1", 80, 10, maint=False, drain=False),
                       "web1": LiveServer("10.0.0.7", 80, 1, maint=False, drain=False)}}
    monkeypatch.setattr(runtime, "live_servers", lambda admin: live)
    assert controller.probe(None, compare=True).liveness is Liveness.RUNNING


def test_started_at_is_on_the_boot_clock() -> None:
    import os
    import subprocess

    before = boot_clock()
    child = subprocess.Popen(["sleep", "5"])
    try:
        started = started_at(child.pid)
        assert started is not None and before - 0.011 <= started <= boot_clock()
        assert started_at(os.getpid()) is not None and started_at(0) is None
    finally:
        child.kill()
        child.wait()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_reload_step_and_the_haproxy_plugin_do_not_import_each_other() -> None:
    root = Path(confsync.__file__).parent
    reload_imports = _imports(root / "reload.py")
    control_imports = _imports(root / "haproxy" / "control.py")
    assert not any(name.startswith("confsync.haproxy") for name in reload_imports)
    assert "confsync.reload" not in control_imports
    assert "confsync.sync" not in control_imports and "confsync.daemon" not in control_imports


def test_a_signal_target_is_probed_through_its_pidfile_and_a_command_is_not(
        tmp_path: Path) -> None:
    import signal
    import subprocess

    from confsync.command_reload import CommandReloader

    pidfile = tmp_path / "app.pid"
    res = Resource(name="app", source=tmp_path / "app.toml", src=tmp_path / "t.tmpl",
                   dest=tmp_path / "app.cfg", keys=("/app",), prefix="",
                   reload_signal=signal.SIGHUP, pidfile=pidfile)
    reloader = CommandReloader(res)
    assert reloader.probe(None).liveness is Liveness.DOWN
    since = boot_clock()
    time.sleep(0.02)  # a clock tick and more
    child = subprocess.Popen(["sleep", "5"])
    try:
        pidfile.write_text(f"{child.pid}\n")
        assert reloader.probe(since).liveness is Liveness.STARTED_SINCE
        assert reloader.probe(boot_clock()).liveness is Liveness.RUNNING
    finally:
        child.kill()
        child.wait()
    assert reloader.probe(since).liveness is Liveness.DOWN
    command = Resource(name="cmd", source=tmp_path / "cmd.toml", src=tmp_path / "t.tmpl",
                       dest=tmp_path / "cmd.cfg", keys=("/app",), prefix="",
                       reload_cmd=("true",))
    assert CommandReloader(command).probe(since).liveness is Liveness.UNKNOWN


def test_check_targets_beats_after_each_targets_answer(tmp_path: Path) -> None:
    """A frozen HAProxy's probe takes its whole timeout: several in a row without a beat made
    /health late (and a liveness probe restart a daemon that was only asking)."""
    syncer, res, _, _ = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")

    class Other(FakeTarget):
        def key(self) -> Hashable:
            return "other"

    other_res = Resource(name="other", source=tmp_path / "other.toml", src=res.src,
                         dest=tmp_path / "other.cfg", keys=("/pool",), prefix="",
                         reload_cmd=("true",))
    other_res.dest.write_text("server 10.0.0.1:80\n")
    syncer._targets[other_res] = Other(Liveness.RUNNING)
    syncer.apply([res, other_res])
    beats: list[float] = []
    assert syncer.check_targets([res, other_res], heartbeat=lambda: beats.append(1)) == ([], [])
    assert len(beats) == 2


def test_a_failed_owed_reload_does_not_claim_a_file_it_never_restored(tmp_path: Path) -> None:
    """A reload owed (installed earlier, never made live) has no previous file to put back:
    its failure said "previous file restored" while the new file stayed, as it should."""
    syncer, res, target, _ = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")
    syncer.reload_owed.add(res.name)

    def reload(previous: bytes | None, content: bytes | None) -> ReloadResult:
        raise ReloadFailed("refused")

    target.reload = reload  # type: ignore[method-assign]
    (outcome,) = syncer.apply([res])
    assert outcome.error is not None and outcome.error.step == "reload"
    assert "restored" not in outcome.error.reason, outcome.error.reason
    assert "stays" in outcome.error.reason, outcome.error.reason
    assert res.dest.read_text() == "server 10.0.0.1:80\n" and res.name in syncer.reload_owed


def _refuse_untouched(target: FakeTarget) -> Callable[[], None]:
    """Make `target`'s reloads fail before it saw anything (`untouched`) until the function
    returned is called; from then on each is confirmed and counted in `target.reloads`."""
    refused = [True]

    def reload(previous: bytes | None, content: bytes | None) -> ReloadResult:
        if refused:
            raise ReloadFailed("a bind on a port held by someone else", untouched=True)
        target.reloads += 1
        return ReloadResult(ReloadKind.CONFIRMED, "reloaded")

    target.reload = reload  # type: ignore[method-assign]
    return refused.clear


@pytest.mark.parametrize("before", ["running it", "owed", "never asked"])
def test_a_rollback_owes_a_reload_only_where_the_file_put_back_may_not_run(
        tmp_path: Path, before: str) -> None:
    """A reload refused before the target saw anything (`untouched`) leaves it running the
    file put back, which it was found running: no reload is owed for it (owed, a shared
    HAProxy's other passes took the whole configuration for unknown). Unless one was owed
    already, or the target was never asked (a start that finds the file changed): the file put
    back may be one it never loaded, and data back to it must still make it live."""
    syncer, res, target, mirror = _setup(tmp_path, Liveness.RUNNING)
    res.dest.write_text("server 10.0.0.1:80\n")
    if before != "never asked":
        (outcome,) = syncer.apply([res])  # found running it
        assert outcome.status == UNCHANGED and target.probes
    if before == "owed":
        syncer.reload_owed.add(res.name)
    accept = _refuse_untouched(target)
    mirror.load(Snapshot(2, {"/pool/a": b"10.0.0.2:80"}))
    (outcome,) = syncer.apply([res])
    assert outcome.error is not None and "previous file restored" in outcome.error.reason
    assert res.dest.read_text() == "server 10.0.0.1:80\n"
    owes = before != "running it"
    assert (res.name in syncer.reload_owed) is owes
    accept()
    mirror.load(Snapshot(3, {"/pool/a": b"10.0.0.1:80"}))  # the data as the file put back
    (outcome,) = syncer.apply([res])
    assert outcome.error is None and target.reloads == owes
    assert res.name not in syncer.reload_owed


def test_a_stale_target_whose_reload_was_refused_untouched_is_reloaded_by_the_retry(
        tmp_path: Path) -> None:
    """The file was current but the target ran an older one (STALE): its reload refused
    before anything was sent leaves it on that older file, so the reload stays owed."""
    syncer, res, target, _ = _setup(tmp_path, Liveness.STALE)
    res.dest.write_text("server 10.0.0.1:80\n")
    accept = _refuse_untouched(target)
    (outcome,) = syncer.apply([res])
    assert outcome.error is not None and res.name in syncer.reload_owed
    accept()
    (outcome,) = syncer.apply([res])  # the retry
    assert outcome.error is None and target.reloads == 1 and res.name not in syncer.reload_owed


def test_parked_servers_held_too_long_are_one_warning_per_5_minutes_and_forgotten_when_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ctl, _, _ = _controller(tmp_path, monkeypatch)
    now = [1000.0]
    monkeypatch.setattr(control, "time", type("Clock", (), {"monotonic": lambda: now[0]}))
    busy = {"be_web/x", "be_web/y", "be_web/z"}
    sent: list[str] = []

    class Admin:
        def command(self, command: str) -> str:
            sent.append(command)
            if command.rpartition(" ")[2] in busy:
                raise RuntimeApplyFailed("Server still has connections attached to it")
            return "Server deleted."

    ctl._parked_admin = Admin()  # type: ignore[assignment]
    ctl._hard_stop_after = 10.0
    ctl.parked.update({"be_web/x", "be_web/y"})

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    ctl._sweep_parked()
    now[0] += 11
    ctl.parked.add("be_web/z")  # parked by a later pass
    ctl._sweep_parked()
    assert len(warnings()) == 1 and "be_web/x left the pool 11s ago" in warnings()[0]
    assert "(and 1 more)" in warnings()[0]
    now[0] += 20  # z is overdue too, but within 5 minutes of the last line
    ctl._sweep_parked()
    assert len(warnings()) == 1
    now[0] += control.PARKED_WARN_EVERY
    ctl._sweep_parked()
    assert len(warnings()) == 2 and "(and 2 more)" in warnings()[1]
    busy.clear()  # their connections close: deleted at the next sweep, nothing kept of them
    ctl._sweep_parked()
    assert ctl.parked == set() and ctl._parked_since == {} and ctl._parked_warned == set()
    assert "del server be_web/z" in sent and ctl.gauges()[0].value == 0
