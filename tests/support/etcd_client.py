"""A small etcd client for tests: writes and deletes go through the same library confsync uses."""

from __future__ import annotations

import pyetcd


def client(endpoint: str, timeout: float = 5.0) -> pyetcd.Etcd3Client:
    host_port = endpoint.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    return pyetcd.client(host=host, port=int(port), timeout=timeout)


def has_quorum(endpoint: str, key: str = "/health") -> bool:
    """True when a write through `endpoint` commits (its cluster has a leader and a quorum)."""
    try:
        client(endpoint, timeout=1).put(key, "ok")
        return True
    except Exception:
        return False
