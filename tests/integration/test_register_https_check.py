"""The http probe against a real HTTPS service on loopback: verified by default, against a CA
file when given, or not at all when told (a local service's self-signed certificate)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from confsync.register.checks import probe_http
from confsync.register.config import CheckSpec
from tests.support.certs import Pki, make_pki


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[Pki, int]]:
    pki = make_pki(tmp_path / "pki")  # the server certificate covers 127.0.0.1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        yield pki, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_https_check_verifies_by_default_then_by_ca_file_or_not_at_all(
        https: tuple[Pki, int]) -> None:
    pki, port = https
    url = f"https://127.0.0.1:{port}/healthz"
    ok, detail = probe_http(CheckSpec("http", timeout=5, url=url))
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail, detail
    ok, detail = probe_http(CheckSpec("http", timeout=5, url=url, ca_file=pki.ca_cert))
    assert ok and detail.endswith(": 204"), detail
    ok, detail = probe_http(CheckSpec("http", timeout=5, url=url, tls_skip_verify=True))
    assert ok and detail.endswith(": 204"), detail


def test_a_ca_file_written_after_the_start_fails_the_check_until_it_is_there(
        https: tuple[Pki, int], tmp_path: Path) -> None:
    """Missing, then half written, then whole: the check says why it fails, then passes
    without a restart (the context follows the file's version)."""
    pki, port = https
    ca = tmp_path / "late-ca.pem"
    spec = CheckSpec("http", timeout=5, url=f"https://127.0.0.1:{port}/healthz", ca_file=ca)
    ok, detail = probe_http(spec)
    assert not ok and f"cannot read ca_file {ca}: No such file or directory" in detail, detail
    whole = pki.ca_cert.read_bytes()
    ca.write_bytes(whole[: len(whole) // 2])
    ok, detail = probe_http(spec)
    assert not ok and f"cannot read ca_file {ca}" in detail, detail
    ca.write_bytes(whole)
    ok, detail = probe_http(spec)
    assert ok and detail.endswith(": 204"), detail
