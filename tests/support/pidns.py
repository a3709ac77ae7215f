"""Run a command as PID 1 of a PID namespace of its own: a container without an init."""

from __future__ import annotations

import shutil
import subprocess

AS_INIT = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child=TERM")


def pid_namespaces_work() -> bool:
    """`unshare --pid` works here (root, or a kernel that lets this user)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*AS_INIT, "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
