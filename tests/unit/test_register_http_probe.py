"""HTTP probes of `confsync register` against a real local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from confsync.register.checks import probe_http
from confsync.register.config import parse_registration


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_path_with_non_ascii_characters_is_sent_percent_encoded(
        server: ThreadingHTTPServer) -> None:
    """The file was accepted, but http.client refused the request line at every probe
    (UnicodeEncodeError: 'ascii' codec ...): a check of /santé never passed, and the instance
    was never registered. Its characters go percent-encoded as UTF-8, as a browser sends
    them."""
    port = server.server_address[1]
    registration = parse_registration(
        Path("/etc/confsync/register.d/web.toml"),
        {"service": "web", "port": port, "address": "127.0.0.1",
         "check": [{"type": "http", "path": "/santé?q=ü&x=1"}]},
        "", "n1", lambda: "127.0.0.1")
    ok, detail = probe_http(registration.checks[0])
    assert (ok, _Recorder.seen) == (True, ["/sant%C3%A9?q=%C3%BC&x=1"]), detail
