"""The HTTP side of both daemons: `/metrics`, `/health` and `/ready` on one address.

A small threaded WSGI server built on prometheus-client's own WSGI app, so content negotiation
(OpenMetrics, gzip, `name[]=` filters) comes from the library. It serves any HealthSource:
`watch`'s Metrics and `register`'s RegisterMetrics, which is why it lives apart from either
(the registrar must not import the watch's render path to serve its probes).
"""

from __future__ import annotations

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
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

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
                 health_max_age: float = HEALTH_MAX_AGE) -> None:
        self.metrics = metrics
        host, port = parse_address(address)
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._routes = {
            "/health": lambda: metrics.health(health_max_age),
            "/healthz": lambda: metrics.health(health_max_age),
            "/ready": metrics.readiness,
            "/readyz": metrics.readiness,
        }
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self._server = make_server(host, port, self._app, server_class, _QuietHandler)
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    def listen(cls, metrics: HealthSource, address: str) -> MetricsServer:
        """Bound and serving, or a ConfigError (exit 2): better to fail at start than to run
        unobserved."""
        try:
            return cls(metrics, address).start()
        except OSError as exc:
            raise ConfigError("metrics_address", f"cannot listen on {address}: "
                              f"{exc.strerror}") from None

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

    def _serve(self) -> None:
        """serve_forever, started again if it ever raises (a bug must not end /health)."""
        while not self._closing:
            try:
                self._server.serve_forever(0.1)
                return
            except Exception:
                log.exception("metrics server failed; serving again in 1s")
                time.sleep(1.0)

    def start(self) -> MetricsServer:
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="confsync-metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])
        return self

    def close(self) -> None:
        self._closing = True
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["DURATION_BUCKETS", "HEALTH_MAX_AGE", "HealthSource", "MetricsServer", "parse_address"]
