"""A real HAProxy run by `confsync watch` in the shipped setting (the runtime strategy, proven
server-only changes skipping `haproxy -c`), for the tests that drive pools through etcd."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.support.daemon import WatchProcess
from tests.support.haproxy import HAProxyStack


@contextlib.contextmanager
def watched_haproxy(haproxy_binary: str, etcd_endpoint: str, log: Path,
                    fill: Callable[[HAProxyStack], None], watch_args: Sequence[str] = (),
                    start_timeout: float = 15.0) -> Iterator[tuple[HAProxyStack, WatchProcess]]:
    """The stack with its basics and what `fill` puts in etcd, synced and started, and a
    `watch` of it (`--wait-min 20ms --wait-max 500ms` and `watch_args`) once it watches; both
    stopped on the way out."""
    stack = HAProxyStack(haproxy_binary, etcd_endpoint, strategy="runtime",
                         check_server_changes=False)
    daemon: WatchProcess | None = None
    try:
        stack.put_basics()
        fill(stack)
        stack.sync_ok()
        stack.start()
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                              *watch_args, log=log)
        daemon.wait_log("watching ", timeout=start_timeout)
        yield stack, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()
