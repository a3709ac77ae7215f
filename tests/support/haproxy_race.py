"""An HAProxy started by someone else (boot, `systemctl start`) while confsync's reload step
looks for its master."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from confsync.haproxy import control
from confsync.haproxy.settings import HAProxySettings
from confsync.plugins import PluginConfig
from confsync.resources import Resource
from tests.support.haproxy import HAProxyStack


def started_in_the_reload_step(
        stack: HAProxyStack, tmp_path: Path, settings: HAProxySettings,
        monkeypatch: pytest.MonkeyPatch) -> tuple[control.HAProxyController, list[bool]]:
    """A controller of the stack's file whose reload step, the first time it asks for the
    master (`show proc`), starts the stack's HAProxy just before: (controller, started),
    `started` not empty once it has. `monkeypatch.undo()` ends that."""
    resource = Resource(name="haproxy", source=tmp_path / "haproxy.toml", src=stack.cfg,
                        dest=stack.cfg, keys=("/x",), prefix="", reload_timeout=10.0,
                        plugin=PluginConfig("haproxy", settings))
    controller = control.HAProxyController(resource, settings)
    real = control.show_proc
    started: list[bool] = []

    def start_then_show_proc(path: Path, retry_for: float = 2.0, timeout: float = 5.0) -> Any:
        if not started:
            started.append(True)
            time.sleep(0.03)  # a clock tick (10 ms) later: within one, it cannot be told apart
            stack.start()
        return real(path, retry_for=retry_for, timeout=timeout)

    monkeypatch.setattr(control, "show_proc", start_then_show_proc)
    return controller, started
