"""Log setup: human text on a terminal, one JSON object per line for collectors.

Secrets (the etcd password) are registered when read and masked in every formatted line, whatever
code path logged them: a library's error message or a traceback is as dangerous as our own text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import queue

MASK = "********"
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


class Repeats:
    """Which of the warnings a retry loop repeats to log: each message the first time, then
    the same message again at most once every `every` seconds. A store that stays away for
    hours must not write a line per retry (hundreds to thousands an hour) to the journal.

    Thread-safe. Messages not logged for `every` are forgotten, so error texts that change
    from retry to retry do not pile up.
    """

    def __init__(self, every: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}  # message -> when it was last logged

    def due(self, message: str) -> bool:
        """True when `message` should be logged now (and it is counted as logged)."""
        now = self._clock()
        with self._lock:
            for old in [m for m, at in self._logged.items() if now - at >= self.every]:
                del self._logged[old]
            if message in self._logged:
                return False
            self._logged[message] = now
            return True

    def forget(self, prefix: str = "") -> None:
        """Said anew: the messages starting with `prefix` (all of them by default)."""
        with self._lock:
            for message in [m for m in self._logged if m.startswith(prefix)]:
                del self._logged[message]


class Rereads:
    """Says the full re-reads (a compaction, a reset) a store follower tries: the first at
    INFO, the retries of one that fails at DEBUG with their count (INFO again every `every`
    seconds), and the one that finally works at INFO. Cut off from etcd after a compaction,
    each retry (every ~10 s) was an INFO line for as long as the outage lasted."""

    def __init__(self, every: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._reason = ""
        self._tries = 0
        self._said_at = 0.0

    def trying(self, reason: str, delay: float) -> None:
        """A re-read for `reason` starts, after `delay` seconds of jitter."""
        now = self._clock()
        if reason != self._reason:
            self._reason, self._tries = reason, 0
        self._tries += 1
        said = self._tries == 1 or now - self._said_at >= self.every
        if said:
            self._said_at = now
        log = logging.getLogger("confsync.watcher")
        if self._tries == 1:
            log.info("re-reading every key (%s) after %.2fs of jitter", reason, delay)
        else:
            log.log(logging.INFO if said else logging.DEBUG, "re-reading every key (%s) after "
                    "%.2fs of jitter: try %d (the earlier ones failed)", reason,
                    delay, self._tries)

    def done(self, reason: str, revision: int) -> None:
        """The re-read for `reason` (if any) worked: said when tries failed before it."""
        if reason == self._reason and self._tries > 1:
            logging.getLogger("confsync.watcher").info(
                "re-read every key (%s) at revision %d after %d tries", reason, revision,
                self._tries)
        if reason == self._reason:
            self._reason, self._tries = "", 0


def escape_controls(text: str) -> str:
    """`text` with every character that is not printable written as its escape (\\n, \\x1b)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in the message are escaped. Messages quote
    keys, values and servers' errors, any of which may hold a line break; the journal would
    take the rest of it as a line of its own, so data could forge log lines. (A traceback,
    appended after the message, keeps its lines.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = escape_controls(record.message)
        return super().formatMessage(record)


class BackgroundStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Formats in the thread that logs, writes on a thread of its own: logging never waits.

    A daemon's stderr is a pipe to journald or a container runtime's log driver. When that
    reader stalls (journald restarting or wedged, a log driver behind a full disk), a write
    blocks once the pipe's 64 KiB are full, and every thread that logs stopped with it: the
    watch loop, the registrar's etcd thread, the checks, while nothing said why. Lines now wait
    in a bounded queue; past QUEUED they are dropped and counted, and the count is logged once
    the stream takes lines again. Formatting stays in the caller (its record, its secrets).
    """

    QUEUED = 10_000
    FLUSH_WAIT = 2.0  # at exit, the longest wait for queued lines to be written

    def __init__(self, stream: Any) -> None:
        import queue  # (here: a one-shot command's log, written in place, does without it)

        super().__init__(stream)
        self._lines: queue.Queue[str | None] = queue.Queue(self.QUEUED)
        self._full = queue.Full
        self._dropped_lock = threading.Lock()
        self._dropped = 0
        self._writer = threading.Thread(target=self._write_lines, name="confsync-log-writer",
                                        daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except self._full:
            with self._dropped_lock:
                self._dropped += 1

    def _write_lines(self) -> None:
        while True:
            line = self._lines.get()
            try:
                if line is None:
                    return
                with self._dropped_lock:
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    self.stream.write(self.format(logging.LogRecord(
                        "confsync", logging.WARNING, __file__, 0,
                        "%d log lines dropped: stderr took none for a while", (dropped,),
                        None)) + self.terminator)
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: there is nowhere else to say it
            finally:
                self._lines.task_done()

    def flush(self) -> None:
        """Wait (FLUSH_WAIT at most) for the lines queued so far to be written."""
        deadline = time.monotonic() + self.FLUSH_WAIT
        while self._lines.unfinished_tasks and time.monotonic() < deadline \
                and self._writer.is_alive():
            time.sleep(0.005)

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(self._full):  # (else the writer is stuck on the stream)
            self._lines.put_nowait(None)
        super().close()


def log_thread_death(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook` of the long-running commands: a thread ended by an exception is
    one ERROR with its traceback, in the log's format (its part is restarted by the loop).
    Python's own hook writes the traceback to stderr itself, beside the log writer: `register`
    cut JSON lines in two with it, and a collector took each traceback line for an entry."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("confsync").error(
        "thread %s died: %s", name, args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _formatter(fmt: str) -> RedactingFormatter:
    return RedactingFormatter(JsonFormatter() if fmt == "json" else TextFormatter(
        "%(asctime)s %(levelname)s %(message)s"))


def setup_logging(level: str, fmt: str, background: bool = False) -> None:
    """Log to stderr; `background` (the long-running commands): through a writer thread, so
    a stalled reader of stderr never stops the daemon (BackgroundStreamHandler)."""
    handler = BackgroundStreamHandler(sys.stderr) if background else \
        logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BackgroundStreamHandler):
            old.close()  # set up again in one process (tests): its writer ends
    root.handlers[:] = [handler]
    root.setLevel(level.upper())



def change_logging(level: str, fmt: str) -> None:
    """Apply a reloaded `log_level` and `log_format` to what `setup_logging` set up, in place:
    its handler, its writer thread and the lines waiting in it stay (a new handler would
    start a second writer, and drop or reorder the lines the old one still held)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(_formatter(fmt))
