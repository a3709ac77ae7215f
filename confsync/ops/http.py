"""The HTTP side of both daemons: `/metrics`, `/health` and `/ready` on one address.

A small threaded WSGI server built on prometheus-client's own WSGI app, so content negotiation
(OpenMetrics, gzip, `name[]=` filters) comes from the library. It serves any HealthSource:
`watch`'s Metrics and `register`'s RegisterMetrics, which is why it lives apart from either
(the registrar must not import the watch's render path to serve its probes).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from confsync.backoff import Backoff
from confsync.errors import ConfigError
from confsync.fdlimit import exhausted
from confsync.settings import parse_host_port as parse_address

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

HEALTH_MAX_AGE = 10.0  # /health fails when the loop has not beaten for this long
# Both daemons' duration histograms (renders, checks, reloads, probes): one scale on a dashboard.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
EXHAUSTED_PAUSE = 0.1  # seconds between accepts while out of file descriptors
# Why an address cannot be bound now but may be later, by itself: the port is held by the
# previous instance still stopping (a registrar's hand-over, a drain), the address is not on an
# interface yet at boot, its name does not resolve yet.
PASSING_BIND_ERRORS = frozenset({errno.EADDRNOTAVAIL, socket.EAI_AGAIN})
# A port in use is waited for this long at start (the instance being replaced still draining:
# a DaemonSet's surge, a registrar's hand-over), then exit 2: held for longer, it is another
# daemon given the same address (`watch` and `register` both read confsync.toml's
# metrics_address), whose /health and /ready would answer for this one.
IN_USE_WAIT = 30.0
BIND_RETRY = (0.5, 5.0)  # first wait, longest wait (seconds) between tries to bind
# A port that stays held (another daemon given the same metrics_address, whose /health and
# /ready then answer for this one) is said again this often, not only once at start.
BIND_SAY_AGAIN = 300.0


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, every read within one deadline: a per-read timeout alone lets a
    client that sends a byte now and then hold its thread forever."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _QuietHandler(WSGIRequestHandler):
    # A client that connects and sends nothing (a port scan, a half-open probe), or sends its
    # request a byte at a time, would hold a thread and a descriptor for the daemon's life:
    # every connection gets this long for its whole request.
    timeout = 10.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # (the socket's own file: left open, it would keep the fd alive)
        deadline = time.monotonic() + (self.timeout or 0.0)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        # Out of descriptors, accept() fails at once while the connection stays queued, so
        # serve_forever found the socket readable again and spun a core (96% CPU for as long
        # as the process was out). A pause lets the loop's own work free some; the client
        # waits in the backlog and is answered then.
        try:
            return super().get_request()
        except OSError as exc:
            if exhausted(exc):
                time.sleep(EXHAUSTED_PAUSE)
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for every client that timed out or
        # reset its connection: a port scan would fill the journal, around the log format.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("metrics http: %s: %s: %s", client_address[0], type(exc).__name__, exc)
        else:
            log.error("metrics http: request from %s failed", client_address[0], exc_info=True)


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class HealthSource(Protocol):
    """What MetricsServer serves: a registry and the two probes (Metrics, RegisterMetrics)."""

    registry: CollectorRegistry

    def health(self, max_age: float = ...) -> tuple[bool, dict[str, Any]]: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class MetricsServer:
    """`/metrics`, `/health`, `/ready` on one address, served from a daemon thread."""

    def __init__(self, metrics: HealthSource, address: str,
                 health_max_age: float = HEALTH_MAX_AGE, bind: bool = True) -> None:
        """Bound at once (an OSError when it cannot be), or with `bind` False by the serving
        thread, tried again until it is."""
        self.metrics = metrics
        self.address = address
        host, port = parse_address(address)
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._routes = {
            "/health": lambda: metrics.health(health_max_age),
            "/healthz": lambda: metrics.health(health_max_age),
            "/ready": metrics.readiness,
            "/readyz": metrics.readiness,
        }
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self._server = server_class((host, port), _QuietHandler, bind_and_activate=False)
        self._server.set_app(self._app)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._bound = False
        self._bind_lock = threading.Lock()  # (close() and the thread's late bind)
        if bind:
            self._bind()

    def _bind(self) -> None:
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()  # (a new socket for the next try)
            self._server.socket = socket.socket(self._server.address_family,
                                                self._server.socket_type)
            raise
        self._bound = True

    @classmethod
    def listen(cls, metrics: HealthSource, address: str) -> MetricsServer:
        """Serving, or a ConfigError (exit 2) for an address that can never be bound (no
        permission for the port, a name that does not exist): better to fail at start than to
        run unobserved. One that may be bound later (PASSING_BIND_ERRORS) is tried again until
        it is, saying so: exit 2 there is one the shipped units never restart, and a
        registrar started to take over from the one still draining on that port, or a
        daemon started before its address is up at boot, stayed down for good."""
        try:
            return cls(metrics, address).start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return cls._when_free(metrics, address)
            if exc.errno not in PASSING_BIND_ERRORS:
                raise ConfigError("metrics_address", f"cannot listen on {address}: "
                                  f"{exc.strerror}") from None
            log.error("metrics: cannot listen on %s yet (%s); /metrics, /health and /ready are "
                      "served once it can be bound, trying again meanwhile", address,
                      exc.strerror)
        return cls(metrics, address, bind=False).start()

    @classmethod
    def _when_free(cls, metrics: HealthSource, address: str) -> MetricsServer:
        """Bound once the port is free, within IN_USE_WAIT; else ConfigError (exit 2). A stop
        signal meanwhile (held until the daemon's handler exists) ends the wait: the daemon
        then stops at its first look."""
        from confsync.ops import held_signals

        log.warning("metrics: %s is in use; waiting up to %.0fs for it to be free (the "
                    "instance being replaced still stopping?)", address, IN_USE_WAIT)
        waits = Backoff(0.05, 1.0, jitter=False)
        deadline = time.monotonic() + IN_USE_WAIT
        while True:
            try:
                return cls(metrics, address).start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError("metrics_address", f"cannot listen on {address}: "
                                      f"{exc.strerror}") from None
            if held_signals.stop_held():
                return cls(metrics, address, bind=False).start()
            if time.monotonic() >= deadline:
                raise ConfigError("metrics_address", (
                    f"cannot listen on {address}: still in use after {IN_USE_WAIT:.0f}s: "
                    "another process keeps it (`watch` and `register` both read "
                    "confsync.toml's metrics_address: give each its own, e.g. "
                    "--metrics-address in the register unit)"))
            time.sleep(waits.next())

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        check = self._routes.get(path)
        if check is None:
            if path in ("/metrics", "/"):
                return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; try /metrics, /health or /ready\n"]
        ok, detail = check()
        body = json.dumps({"ok": ok, **detail}).encode() + b"\n"
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                        ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _bind_late(self) -> bool:
        """Bind, trying again with a backoff until bound (True) or closed (False)."""
        waits = Backoff(*BIND_RETRY)
        said, said_at, began = "", time.monotonic(), time.monotonic()
        while True:
            with self._bind_lock:
                if self._closing:
                    return False
                try:
                    self._bind()
                except OSError as exc:
                    why = exc.strerror or str(exc)
                else:
                    log.info("metrics on http://%s:%d/metrics (bound now)",
                             *self._server.server_address[:2])
                    return True
            if why != said or time.monotonic() - said_at >= BIND_SAY_AGAIN:
                if said:  # (the first: listen() said it)
                    log.error("metrics: cannot listen on %s yet (%s; %.0fs now): /metrics, "
                              "/health and /ready are not served", self.address, why,
                              time.monotonic() - began)
                said, said_at = why, time.monotonic()
            time.sleep(waits.next())

    def _serve(self) -> None:
        """serve_forever, started again if it ever raises (a bug must not end /health)."""
        if not self._bound and not self._bind_late():
            return
        while True:  # (once at least: a close() already waiting for it returns then)
            try:
                self._server.serve_forever(0.1)
                return
            except Exception:
                if self._closing:
                    return
                log.exception("metrics server failed; serving again in 1s")
                time.sleep(1.0)

    def start(self) -> MetricsServer:
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="confsync-metrics",
                                        daemon=True)
        self._thread.start()
        if self._bound:
            log.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])
        return self

    def close(self) -> None:
        with self._bind_lock:
            self._closing = True
            bound = self._bound
        if bound:  # (shutdown() waits for a serve_forever that never ran otherwise)
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["DURATION_BUCKETS", "HEALTH_MAX_AGE", "HealthSource", "MetricsServer", "parse_address"]
