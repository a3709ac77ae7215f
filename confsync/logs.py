"""Log setup: human text on a terminal, one JSON object per line for collectors.

Secrets (the etcd password) are registered when read and masked in every formatted line, whatever
code path logged them. `ApplyLog` is the audit trail: one event per apply, with key names and line
counts but never values or diffs, since rendered files routinely hold credentials.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from confsync.events import Observer

if TYPE_CHECKING:
    from confsync.resources import Resource
    from confsync.sync import Outcome

log = logging.getLogger("confsync")
MASK = "********"
MAX_KEYS_LOGGED = 20
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask `value` in all log output from now on (short values would mask ordinary words)."""
    if len(value) >= 4:
        _secrets.add(value)
        _secrets.add(json.dumps(value)[1:-1])  # as it appears inside a JSON string


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter; masks registered secrets in the finished line (message, extras,
    tracebacks alike)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        return redact(text) if _secrets else text

# Attributes every LogRecord has; anything else was passed with extra= and is event data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def diff_stats(diff: str) -> tuple[int, int]:
    """(lines added, lines removed) of a unified diff, headers excluded."""
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed


class ApplyLog(Observer):
    """The daemon's audit trail: one event per apply, plus the watch's state changes."""

    def __init__(self) -> None:
        self._resources: Sequence[Resource] = ()

    def started(self, resources: Sequence[Resource]) -> None:
        self._resources = resources
        log.info("loaded %d resources", len(resources), extra={"resources": len(resources)})

    def snapshot_loaded(self, revision: int, keys: int) -> None:
        log.info("snapshot at revision %d: %d keys", revision, keys,
                 extra={"revision": revision, "keys": keys})

    def watch_connected(self, revision: int) -> None:
        log.info("watching from revision %d", revision, extra={"revision": revision})

    def watch_lost(self, reason: str) -> None:
        log.warning("watch lost: %s", reason, extra={"reason": reason})

    def ready(self, revision: int) -> None:
        log.info("ready: every resource rendered at revision %d", revision,
                 extra={"revision": revision})

    def config_reloaded(self, ok: bool, message: str) -> None:
        if ok:
            log.info("configuration reloaded: %s", message)
        else:
            log.error("configuration reload refused, the previous one runs on: %s", message)

    def stopping(self) -> None:
        log.info("stopping")

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.log_outcome(outcome, revision, changed_keys)

    @staticmethod
    def log_outcome(outcome: Outcome, revision: int, changed_keys: Sequence[str] = ()) -> None:
        res = outcome.resource
        keys = [k for k in changed_keys if res.covers(k)]
        added, removed = diff_stats(outcome.diff)
        fields: dict[str, Any] = {
            "event": "apply", "resource": res.name, "dest": str(res.dest), "revision": revision,
            "outcome": outcome.status, "seconds": round(outcome.seconds, 4),
            "changed_keys": keys[:MAX_KEYS_LOGGED], "changed_keys_total": len(keys),
            "lines_added": added, "lines_removed": removed,
        }
        reload_seconds = getattr(outcome, "reload_seconds", None)
        if outcome.reload:
            fields["reload"] = outcome.reload
        if isinstance(reload_seconds, float | int):
            fields["reload_seconds"] = round(reload_seconds, 4)
        if outcome.status == "failed" and outcome.error is not None:
            fields["step"] = outcome.error.step
            fields["error"] = outcome.error.reason  # includes check_cmd output when it failed
            log.error("%s", outcome.error, extra=fields)
        elif outcome.status == "updated":
            log.info("resource %s: wrote %s (+%d -%d lines)%s", res.name, res.dest, added,
                     removed, f"; {outcome.reload}" if outcome.reload else "", extra=fields)
        else:
            log.debug("resource %s: %s is up to date", res.name, res.dest, extra=fields)
