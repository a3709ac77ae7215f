"""The shipped units: `systemd-analyze verify` finds nothing, and the contract directives hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def directives(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines by key (units repeat keys; comments and sections dropped)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", ["confsync.service", "confsync@.service"])
def test_contract_directives(name: str) -> None:
    d = directives(UNITS / name)
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(one["WatchdogSec"].rstrip("s")) >= 60, "above check_timeout + reload_timeout"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and d["ReadWritePaths"]
    assert set(one["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert set(one["CapabilityBoundingSet"].split()) == {
        "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_KILL"}
    if "@" in name:
        assert one["ExecStart"].endswith("--config /etc/confsync/%i/confsync.toml")


@pytest.mark.parametrize("name", ["confsync.service", "confsync@.service"])
def test_shipped_haproxy_resource_can_write_what_it_writes(name: str) -> None:
    """`confsync@haproxy` (README: `cp -r templates/haproxy /etc/confsync/haproxy`) writes
    /etc/haproxy/haproxy.cfg and, before every reload, the template's server-state file
    /var/lib/haproxy/server-state: ProtectSystem=strict must leave both writable, as in
    confsync.service (without it every pool change warned `cannot save HAProxy's server state`
    and servers' health was not carried across reloads)."""
    paths = {p.lstrip("-").replace("%i", "haproxy")
             for p in directives(UNITS / name)["ReadWritePaths"]}
    assert {"/etc/haproxy", "/var/lib/haproxy"} <= paths


def test_register_unit_contract() -> None:
    d = directives(UNITS / "confsync-register.service")
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == "/usr/local/bin/confsync register --config /etc/confsync/confsync.toml"
    assert one["RestartPreventExitStatus"] == "2"
    assert int(one["TimeoutStopSec"].rstrip("s")) >= 5 + 10, "above drain + exec stop_timeout"
    assert int(one["WatchdogSec"].rstrip("s")) >= 10
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and "ReadWritePaths" not in d
    assert one["CapabilityBoundingSet"] == "", "a registrar needs no capabilities"


def verify(unit_dir: Path, unit: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", "--man=no", str(unit_dir / unit)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this checkout's entry point (verify checks it)."""
    if ANALYZE is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    confsync = Path(sys.executable).with_name("confsync")
    if not confsync.exists():
        confsync = Path(shutil.which("confsync") or "/usr/local/bin/confsync")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/usr/local/bin/confsync", str(confsync))
        (tmp_path / unit.name).write_text(text)
    # verify needs an instance name for a template
    (tmp_path / "confsync@haproxy.service").write_text(
        (tmp_path / "confsync@.service").read_text())
    return tmp_path


@pytest.mark.parametrize("unit", ["confsync.service", "confsync@haproxy.service",
                                  "confsync-register.service"])
def test_systemd_analyze_verify(unit_dir: Path, unit: str) -> None:
    done = verify(unit_dir, unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_verify_would_catch_a_typo(unit_dir: Path) -> None:
    text = (unit_dir / "confsync.service").read_text()
    (unit_dir / "broken.service").write_text(
        text.replace("NoNewPrivileges=", "NoNewPrivilegs=").replace("Type=notify", "Type=nope"))
    done = verify(unit_dir, "broken.service")
    assert "NoNewPrivilegs" in done.stderr and "nope" in done.stderr


@pytest.mark.parametrize("unit", ["confsync.service", "confsync@haproxy.service",
                                  "confsync-register.service"])
def test_hardening_score_stays_ok(unit_dir: Path, unit: str) -> None:
    """`systemd-analyze security` rates exposure 0-10; ours is 2.5 ("OK"). Fail above 3.0
    so a lost directive shows up here, not in an audit."""
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=30",
                           str(unit_dir / unit)], capture_output=True, text=True, timeout=60)
    if "Unknown option" in done.stderr or "unrecognized option" in done.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250+")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Overall exposure level" in done.stdout


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[:-len(suffix)]) * units[suffix]
    return float(value)


@pytest.mark.parametrize("name", ["confsync.service", "confsync@.service",
                                  "confsync-register.service"])
def test_a_unit_never_gives_up_on_a_transient_failure(name: str) -> None:
    """10 failed starts in 5 minutes (RestartSec=2s: ~30 s of exit 127 for an --exec program
    not installed yet, exit 3, a crash) left the unit failed for good, the node unmanaged.
    Restarts can never reach the start limit now; exit 2 alone is never restarted."""
    one = {k: v[-1] for k, v in directives(UNITS / name).items()}
    assert one["Restart"] == "on-failure" and one["RestartPreventExitStatus"] == "2"
    restart = _seconds(one["RestartSec"])
    assert restart >= 5, "a start that keeps failing must not be a hot loop"
    interval = _seconds(one.get("StartLimitIntervalSec", "10s"))  # systemd's defaults
    burst = int(one.get("StartLimitBurst", "5"))
    assert interval == 0 or interval / restart < burst, (interval, burst, restart)


def _drop_in_example(path: Path) -> dict[str, list[str]]:
    """The directives of the drop-in a unit's header comment suggests (`#   Key=value`)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        text = line[1:].strip() if line.startswith("#   ") else ""
        if text and not text.startswith(("#", "[")) and "=" in text:
            key, value = text.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_register_exec_drop_in_restarts_a_child_killed_outside_a_stop() -> None:
    """In exec mode `register` exits with its child's status. SuccessExitStatus=143 keeps a
    `systemctl stop` (the child dies of SIGTERM) from leaving the unit failed, but alone it
    also made a child SIGTERMed by anyone else a clean exit that Restart=on-failure never
    restarts: the service down and deregistered for good. Every status made a success must
    be one that still forces a restart (systemd never restarts a unit asked to stop)."""
    example = _drop_in_example(UNITS / "confsync-register.service")
    assert any("--exec" in e for e in example["ExecStart"]), example
    success = {s for v in example.get("SuccessExitStatus", []) for s in v.split()}
    forced = {s for v in example.get("RestartForceExitStatus", []) for s in v.split()}
    assert "143" in success
    assert success <= forced, (success, forced)
