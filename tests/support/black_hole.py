"""Addresses that swallow connections: a listening socket that never accepts. The kernel
completes each TCP handshake (its backlog), nothing ever answers: what a client sees of a
member whose host dropped off the network behind a firewall that drops, or of a frozen
process. Only a timeout tells."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from tests.support.etcd_server import free_port


@contextlib.contextmanager
def black_holes(count: int) -> Iterator[list[str]]:
    """`count` http:// endpoints on loopback that accept connections and never answer."""
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_server(("127.0.0.1", free_port()), backlog=64))
        yield [f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()
