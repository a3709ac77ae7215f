"""Tiny HTTP backends on 127.0.0.1 that answer with their own name: who served a request."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        body = self.server.name.encode()
        with self.server.lock:
            self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    name: str
    hits: int
    lock: threading.Lock

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checks and closed keep-alive connections reset: not worth a traceback


class HTTPBackend:
    """`with HTTPBackend("web-1") as b:` serves GET on 127.0.0.1:b.port with body "web-1"."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.name = name
        self._server.hits = 0
        self._server.lock = threading.Lock()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def hits(self) -> int:
        return self._server.hits

    def start(self) -> HTTPBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HTTPBackend:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
