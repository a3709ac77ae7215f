"""The file backend: YAML, JSON or TOML files flattened to `/a/b` keys (lists by index).

For demos, containers without etcd, and tests of pure logic. Changes are seen with watchdog;
each re-read that changes anything bumps a local revision.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confsync.errors import StoreUnavailable
from confsync.paths import expand_user
from confsync.stores.base import Change, ChangeBatch, Snapshot, WatchHandle, WatchSink
from confsync.stores.goyaml import DROPPED, PlainScalar, load_json, resolve_plain
from confsync.stores.goyaml import load as load_yaml

log = logging.getLogger(__name__)


# What a data file may hold once flattened. A YAML alias can be used many times over (nine
# levels of nine aliases are 387 million keys from a few lines) or inside itself (`a: &a [*a]`):
# the limits make either a bad data file instead of a hang or a RecursionError.
MAX_DEPTH = 200
MAX_KEYS = 1_000_000
# Values walked, keys or not: aliases of nulls or empty lists/tables (`[~, ~, ...]`, `[[], ...]`)
# make no key, so MAX_KEYS alone never stopped eight levels of them (10**8 values, minutes).
MAX_VALUES = 2 * MAX_KEYS


def flatten(data: Any, prefix: str = "") -> dict[str, bytes]:
    """Nested mappings and lists to flat keys; scalars as text as confd's file backend writes
    them (true/false, floats without exponent, nulls left out).

    ValueError when the data nests deeper than MAX_DEPTH, flattens to over MAX_KEYS keys or
    holds over MAX_VALUES values.
    """
    out: dict[str, bytes] = {}
    _flatten(data, prefix, out, 0, [MAX_VALUES])
    return out


def _join(prefix: str, key: object) -> str:
    """Go's path.Join(prefix, key), as confd's file backend joins keys: a mapping key may be a
    path itself (`/app/port: 80` at the top is /app/port, not //app/port; `a/: x` is /a)."""
    # normpath is Go's path.Clean for a rooted path, but for POSIX's leading "//".
    return "/" + posixpath.normpath(f"{prefix or '/'}/{key}").lstrip("/")


def _flatten(data: Any, prefix: str, out: dict[str, bytes], depth: int,
             budget: list[int]) -> None:
    budget[0] -= 1  # values left to walk, shared by the whole walk
    if budget[0] < 0:
        raise ValueError(f"more than {MAX_VALUES} values (YAML aliases of nulls or empty "
                         f"lists used over and over?)")
    if depth > MAX_DEPTH:
        where = prefix if len(prefix) <= 60 else prefix[:60] + "..."
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep (a YAML alias "
                         f"inside itself?)")
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(value, _join(prefix, key), out, depth + 1, budget)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _flatten(value, _join(prefix, index), out, depth + 1, budget)
    else:
        if len(out) >= MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} keys (YAML aliases used over and over?)")
        if isinstance(data, PlainScalar):
            data = resolve_plain(data)
        if data is None or data is DROPPED:
            return  # confd's file backend skips a null (`key:`, `~`) and a uint64: no key
        if isinstance(data, bool):
            out[prefix or "/"] = b"true" if data else b"false"
        elif isinstance(data, bytes):  # YAML's !!binary: the bytes, as etcd would hold them
            out[prefix or "/"] = data
        elif isinstance(data, float):
            out[prefix or "/"] = _go_float_text(data).encode()
        else:
            out[prefix or "/"] = str(data).encode("utf-8")


def _go_float_text(value: float) -> str:
    """strconv.FormatFloat(value, 'f', -1, 64), as confd's file backend writes a YAML float:
    never an exponent, no `.0` (1.0 is "1", 1e20 is "100000000000000000000")."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    from decimal import Decimal  # lazy: only a data file with floats pays for it

    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" and not repr(value).startswith("-") else text


def _expanded(path: Path) -> Path:
    """A data file's path as used now: `~user` of a user not known yet (kept as written by
    tomlvalues.late_user_path) is a file that cannot be read yet, as a missing one."""
    try:
        return expand_user(path)
    except ValueError as exc:
        raise StoreUnavailable(f"file backend: cannot read {path}: {exc}") from None


def read_data_file(path: Path) -> dict[str, bytes]:
    try:
        raw = _expanded(path).read_bytes()
    except OSError as exc:
        raise StoreUnavailable(f"file backend: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            data = load_json(raw)
        elif path.suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = load_yaml(raw)
        if data is not None and not isinstance(data, dict):
            # confd's yaml.Unmarshal into a map fails the same way: no key would be /0 or /
            raise ValueError(f"its top level is a {type(data).__name__}, not a mapping "
                             "(confd cannot read it either)")
        return flatten(data) if data is not None else {}
    except Exception as exc:  # any parser's error is a bad data file, reported with its path
        raise StoreUnavailable(f"file backend: cannot parse {path}: {exc}") from None


class FileStore:
    name = "file"

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = tuple(paths)
        self._lock = threading.Lock()
        self._revision = 0
        self._values: dict[str, bytes] | None = None

    def _read_all(self) -> dict[str, bytes]:
        values: dict[str, bytes] = {}
        for path in self._paths:
            values.update(read_data_file(path))
        return values

    def _refresh(self) -> tuple[int, dict[str, bytes], dict[str, bytes]]:
        """Re-read; return (revision, new values, old values). Bumps the revision on change."""
        new = self._read_all()
        with self._lock:
            old = self._values or {}
            if self._values is None or new != old:
                self._revision += 1
                self._values = new
            return self._revision, new, old

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        revision, values, _ = self._refresh()
        return Snapshot(revision, {k: v for k, v in values.items()
                                   if any(k.startswith(p) for p in prefixes)})

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        from confsync.fswatch import start_observer

        # The paths as given, not resolved: a Kubernetes ConfigMap's data.yaml links through
        # ..data to a directory that each update replaces (a new one, a rename of ..data, the
        # old one deleted), so a watch of the resolved directory goes deaf after one update.
        # A symlink to a file elsewhere gets that directory watched as well.
        given = {Path(os.path.abspath(_expanded(p))) for p in self._paths}
        named = {str(p.parent) for p in given}
        directories = named | {
            str(p.resolve().parent) for p in given if p.resolve().parent.is_dir()}
        store = self

        def refresh() -> None:
            try:
                revision, new, old = store._refresh()
            except StoreUnavailable as exc:
                # A half-written or broken file: keep the mirror as it is, the watch lives on.
                log.error("%s; keeping the last good data", exc)
                return
            changes = tuple(
                Change(k, new.get(k))
                for k in sorted(set(new) | set(old))
                if new.get(k) != old.get(k) and any(k.startswith(p) for p in prefixes)
            )
            if changes:
                sink(ChangeBatch(revision, changes))

        def concerns_us(touched: set[Path]) -> bool:
            if touched & given or any(t.name.startswith("..") for t in touched):
                return True  # a data file itself, or Kubernetes' ..data swap
            current = {p.resolve() for p in given}  # where the links point now
            return bool({t.resolve() for t in touched} & current)

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                deleted = str(event.src_path)
                if event.event_type == "deleted" and deleted in named:
                    # Its emitter stops with it: a directory recreated under the same name
                    # would go unwatched for good. Fail the watch; the follower starts a new
                    # one (reporting the loss meanwhile) once the directory is back. (A link's
                    # target directory going away is a ConfigMap update: ..data says so.)
                    sink(StoreUnavailable(f"file backend: {deleted} was deleted; "
                                          f"watching it again once it is back"))
                    return
                touched = {Path(str(event.src_path))}
                if getattr(event, "dest_path", ""):
                    touched.add(Path(str(event.dest_path)))
                if concerns_us(touched):
                    refresh()  # (compares contents: a false alarm changes nothing)

        try:
            observer = start_observer(Handler(), sorted(directories), recursive=False,
                                      what="file backend")
        except OSError as exc:  # a directory that is gone: a lost watch, tried again
            raise StoreUnavailable(f"file backend: cannot watch {', '.join(sorted(directories))}"
                                   f": {exc.strerror or exc}") from None
        # A change between the snapshot and the observer's start raised no event: look once.
        refresh()
        return _ObserverHandle(observer)

    def close(self) -> None:
        return None


class _ObserverHandle:
    def __init__(self, observer: Any) -> None:
        self._observer = observer

    def cancel(self) -> None:
        from confsync.fswatch import stop_observer

        stop_observer(self._observer)
        self._observer.join(timeout=5)
