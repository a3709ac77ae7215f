"""The env backend: `/db/host` is read from `DB_HOST`, as in confd."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from confsync.stores.base import Snapshot, WatchHandle, WatchSink


class _NoWatch:
    def cancel(self) -> None:
        return None


class EnvStore:
    """The environment cannot change under a running process, so the watch never fires."""

    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        values: dict[str, bytes] = {}
        for name, value in self._environ.items():
            key = "/" + name.lower().replace("_", "/")
            if any(key.startswith(p) for p in prefixes):
                values[key] = value.encode("utf-8", "surrogateescape")
        return Snapshot(revision=1, values=values)

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        return _NoWatch()

    def close(self) -> None:
        return None
