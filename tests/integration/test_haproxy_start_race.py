"""HAProxy started (by someone else: boot, `systemctl start`) while a pass's reload step runs,
after the new file was installed and before the server-state file was brought to it: it loaded
the new file with the state saved for the previous one, which HAProxy 2.6 lets override a
server's address, port and maintenance. The step took it for in step (it read the new file)
and left it serving a moved server at its old address until that server changed again.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.targets import ReloadKind
from tests.support.cli import REPO
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, spread
from tests.support.haproxy_race import started_in_the_reload_step
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@pytest.fixture(params=["runtime", "reload"])
def stack(request: pytest.FixtureRequest, haproxy_binary: str,
          etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=request.param)
    yield s
    s.stop()


def _install_only(stack: HAProxyStack, tmp_path: Path) -> None:
    """Write the file as a pass does before its reload step (the same resource, no target)."""
    elsewhere = tmp_path / "confdir"
    (elsewhere / "conf.d").mkdir(parents=True)
    resource = (stack.confdir / "conf.d" / "haproxy.toml").read_text()
    (elsewhere / "conf.d" / "haproxy.toml").write_text(resource.split("[haproxy]")[0])
    args = stack.cli_args()
    args[args.index("--confdir") + 1] = str(elsewhere)
    once = subprocess.run([sys.executable, "-m", "confsync", "once", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert once.returncode == 0, once.stderr


def test_haproxy_started_in_the_reload_step_serves_etcds_pool_and_an_operators_maintenance(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    stack.put_basics()
    for name in ("a", "b"):
        stack.put_instance("web", name, backends[name].port)
    stack.sync_ok()
    stack.start()
    assert stack.admin_command("disable server be_web/a").strip() == ""
    stack.put("/services/api/config", {"path_prefix": "/api", "check_path": "/"})
    stack.put_instance("api", "d", backends["c"].port)
    assert "reloaded HAProxy" in stack.sync_ok()  # saved the state: a in maintenance, b
    stack.halt()
    previous = stack.cfg.read_bytes()
    stack.put_instance("web", "b", backends["c"].port)  # b moves while HAProxy is down
    _install_only(stack, tmp_path)
    content = stack.cfg.read_bytes()

    strategy = Strategy.RUNTIME if stack.strategy == "runtime" else Strategy.RELOAD
    settings = HAProxySettings(master_socket=stack.master, strategy=strategy)
    controller, started = started_in_the_reload_step(stack, tmp_path, settings, monkeypatch)
    result = controller.reload(previous, content)
    assert started and result.kind is not ReloadKind.NO_TARGET, result
    assert spread(stack.port, 4) == {"c": 4}  # b at its new port; a still in maintenance
    assert live_servers(AdminSocket(stack.admin))["be_web"]["a"].maint
