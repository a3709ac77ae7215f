"""Stores: the only code that talks to a data source.

A store gives a snapshot of several prefixes read at one revision, and a watch that delivers
change batches tagged with their revision. Backends are imported lazily, and `once`/`check`
read etcd through its JSON gateway (`open_snapshot_store`), so a one-shot run never pays for
gRPC. The types every backend shares live in confsync.stores.base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confsync.stores.base import (
    Change,
    ChangeBatch,
    ReplayComplete,
    ReplayStarted,
    Snapshot,
    Store,
    WatchHandle,
    WatchSink,
    merge_prefixes,
)

if TYPE_CHECKING:
    from confsync.settings import Settings


__all__ = ["Change", "ChangeBatch", "ReplayComplete", "ReplayStarted", "Snapshot", "Store",
           "WatchHandle", "WatchSink", "merge_prefixes", "open_snapshot_store", "open_store"]


def open_store(settings: Settings) -> Store:
    """Build the configured backend; only here do backend modules get imported."""
    if settings.backend == "etcd":
        from confsync.stores.etcd import EtcdStore

        return EtcdStore(settings.etcd)
    if settings.backend == "file":
        from confsync.stores.file import FileStore

        return FileStore(settings.file_paths)
    from confsync.stores.env import EnvStore

    return EnvStore()


def open_snapshot_store(settings: Settings) -> Store:
    """The backend for one snapshot and no watch (`once`, `check`): etcd through its JSON
    gateway, so a one-shot run never imports gRPC unless the gateway is missing."""
    if settings.backend == "etcd":
        from confsync.stores.etcd_gateway import EtcdGatewayStore

        return EtcdGatewayStore(settings.etcd)
    return open_store(settings)
