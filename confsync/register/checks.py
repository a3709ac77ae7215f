"""Health checks of the local service: http, tcp, exec probes with rise/fall hysteresis.

Each check runs on a thread of its own at its interval (a probe blocks for up to its timeout,
and one slow check must not delay another or the registrar's loop) and reports every result to
a callback; the loop owns all state. Probes never go through a shell or a proxy.
"""

from __future__ import annotations

import functools
import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from confsync import resolve
from confsync.commands import run_command
from confsync.fdlimit import describe, exhausted
from confsync.fileversion import FileVersion, file_version
from confsync.register import lease_clock
from confsync.register.config import CheckSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    registration: str
    index: int  # position of the check in its file
    ok: bool
    seconds: float
    detail: str  # why it failed, or what it saw


class Hysteresis:
    """Up after `rise` passes in a row, down after `fall` failures in a row; starts down, so an
    instance is published only once it has proved itself."""

    def __init__(self, rise: int, fall: int) -> None:
        self.rise = rise
        self.fall = fall
        self.up = False
        self._streak = 0  # consecutive results that disagree with `up`

    def observe(self, ok: bool) -> bool:
        """Record one result; True when `up` changed."""
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            return True
        return False


def probe_http(spec: CheckSpec) -> tuple[bool, str]:
    parts = urlsplit(spec.url)
    host = parts.hostname or "127.0.0.1"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        try:
            context = _tls_context(spec, file_version(spec.ca_file))
        except OSError as exc:  # (ssl.SSLError too: a CA file half written, or not PEM)
            return False, f"GET {spec.url}: cannot read ca_file {spec.ca_file}: {describe(exc)}"
        conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=spec.timeout,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=spec.timeout)
    conn._create_connection = _connect  # type: ignore[attr-defined]
    try:
        conn.request("GET", _request_target(parts), headers={"User-Agent": "confsync-register",
                                           "Connection": "close"})
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exhausted(exc):
            return False, f"GET {spec.url}: {describe(exc)}"
        return False, f"GET {spec.url}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    ok = status in spec.expect_status if spec.expect_status else 200 <= status < 400
    return ok, f"GET {spec.url}: {status}"


def _request_target(parts: SplitResult) -> str:
    """The path and query to GET, non-ASCII characters percent-encoded as UTF-8 (as a browser
    sends them): http.client refused them at every probe (UnicodeEncodeError), so a check of
    /santé, accepted at load, never passed and its instance was never registered."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return "".join(c if c.isascii() else quote(c, safe="") for c in target)


@functools.lru_cache(maxsize=64)
def _tls_context(spec: CheckSpec, ca_version: FileVersion | None) -> ssl.SSLContext:
    """One context per check and CA file version (a probe every interval need not re-read
    the file, and a renewed one is picked up)."""
    context = ssl.create_default_context(
        cafile=str(spec.ca_file) if spec.ca_file is not None else None)
    if spec.tls_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _connect(address: tuple[str, int], timeout: float,
             source_address: object = None) -> socket.socket:
    """Connect within `timeout`, the name's lookup included. getaddrinfo has no timeout:
    a probe of a name DNS did not answer sat in it for the resolver's retries (up to
    30 s x 5), reported only as "stuck", and the instance stayed down that long after DNS
    answered again."""
    return resolve.create_connection(address, timeout)


def probe_tcp(spec: CheckSpec) -> tuple[bool, str]:
    try:
        with _connect((spec.host, spec.port), spec.timeout):
            return True, f"connect {spec.target}: ok"
    except OSError as exc:
        return False, f"connect {spec.target}: {describe(exc)}"


def probe_exec(spec: CheckSpec) -> tuple[bool, str]:
    """The command's own exit status decides, as for a resource's check or reload command (the
    same runner: argv only, a timeout that kills its process group, and output in a file, so
    a probe that leaves a daemonized child holding stderr cannot hang the check forever).
    What it leaves running in its process group is killed at its exit: a probe per interval
    for months must not pile up processes."""
    result = run_command(spec.command, spec.timeout, end_group=True)
    if result.ok:
        return True, f"`{spec.target}` exited 0"
    if result.returncode is None:  # timed out (and killed) or could not start
        return False, result.output[:300]
    tail = result.output.splitlines()[-1:]
    return False, f"`{spec.target}` exited {result.returncode}" + (f": {tail[0][:200]}"
                                                                   if tail else "")


PROBES: dict[str, Callable[[CheckSpec], tuple[bool, str]]] = {
    "http": probe_http, "tcp": probe_tcp, "exec": probe_exec}


# A probe still running this long after interval + timeout is reported as a failure by the loop
# (see CheckRunner.stalled): a socket timeout bounds each read, not the whole probe, so a
# service that trickles its answer a byte at a time would otherwise freeze the check "up".
STALL_GRACE = 1.0


class CheckRunner:
    """Runs one check every `interval` on its own thread until `stop()`."""

    def __init__(self, registration: str, index: int, spec: CheckSpec,
                 report: Callable[[Result], None]) -> None:
        self.registration = registration
        self.index = index
        self.spec = spec
        self._report = report
        self._stop = threading.Event()
        self._thread = self._new_thread()
        self._last_result = lease_clock.now()  # read by the loop thread (a float: atomic)
        # Silence before this (lease_clock) time is not the probe's: the whole process was
        # stopped (see `excuse`). Written by the loop thread only.
        self._excused = 0.0

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, daemon=True,
                                name=f"check-{self.registration}-{self.index}")

    def start(self) -> CheckRunner:
        self._last_result = lease_clock.now()  # silence is counted from the start, not from
        self._thread.start()                  # construction (a start may wait for a lease)
        return self

    def revive(self) -> bool:
        """Called by the loop each tick: a check thread that died (what no `except Exception`
        catches) is started again, else its check would count as failing for good."""
        if self._stop.is_set() or self._thread.is_alive() or self._thread.ident is None:
            return False
        log.error("register: check %s of %s stopped unexpectedly; starting it again",
                  self.index, self.registration)
        self._thread = self._new_thread()
        self._thread.start()
        return True

    def _run(self) -> None:
        probe = PROBES[self.spec.type]
        next_at = lease_clock.now()
        while not self._stop.is_set():
            started = lease_clock.now()
            try:
                ok, detail = probe(self.spec)
            except Exception as exc:  # a probe bug must not kill the check thread
                ok, detail = False, f"probe failed: {type(exc).__name__}: {exc}"
            self._last_result = lease_clock.now()
            self._report(Result(self.registration, self.index, ok,
                                self._last_result - started, detail))
            next_at = max(next_at + self.spec.interval, lease_clock.now())
            self._stop.wait(next_at - lease_clock.now())

    def excuse(self, now: float) -> None:
        """The whole process was stopped until `now` (SIGSTOP, a paused VM, a debugger): the
        probe thread was stopped with it, so the silence so far says nothing about the probe.
        It gets a fresh interval + timeout + grace from now; a probe that is really stuck is
        still reported then."""
        self._excused = now

    def stalled(self, now: float) -> Result | None:
        """A failed result when no result came for interval + timeout + grace (a hung probe or a
        dead thread); None while the check reports in time."""
        silent = now - max(self._last_result, self._excused)
        if silent <= self.spec.interval + self.spec.timeout + STALL_GRACE:
            return None
        state = "has stopped" if not self._thread.is_alive() else "is stuck"
        return Result(self.registration, self.index, False, silent,
                      f"no result for {silent:.1f}s: the probe of {self.spec.target} {state}")

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
