"""The gateway store's small HTTP/1.1 reader and how it reads answers (the rest of the gateway
path runs against real etcd in tests/integration/test_etcd_gateway.py)."""

from __future__ import annotations

import io
import json

import pytest

from confsync.stores import etcd_gateway as gw


def reader(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


def read(data: bytes) -> tuple[int, bytes]:
    r = reader(data)
    status, headers = gw._read_head(r)
    return status, gw._read_body(r, headers)


def test_content_length_chunked_and_to_the_close() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello+next") == (200, b"hello")
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    assert read(chunked) == (200, b"hello world")
    assert read(b"HTTP/1.0 404 Not Found\n\nno length") == (404, b"no length")


@pytest.mark.parametrize("data", [
    b"",  # closed without an answer
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",  # an HTTP/2 SETTINGS frame
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
])
def test_what_is_not_http_is_said_so(data: bytes) -> None:
    with pytest.raises(gw._NotHTTP):
        read(data)


def error(code: int, message: str) -> bytes:
    return json.dumps({"error": message, "code": code, "message": message}).encode()


def test_answers_tell_gateway_problems_from_etcd_errors() -> None:
    header = json.dumps({"header": {"revision": "7"}}).encode()
    assert gw._answer("/v3/kv/txn", 200, header) == {"header": {"revision": "7"}}
    with pytest.raises(gw._NoGateway, match="HTTP 404"):
        gw._answer("/v3/kv/txn", 404, b"404 page not found")
    with pytest.raises(gw._NoGateway, match="CommonName"):
        gw._answer("/v3/kv/txn", 400, b"CommonName of client sending a request against "
                                      b"gateway will be ignored and not used as expected\n")
    with pytest.raises(gw._NoGateway, match="without JSON"):
        gw._answer("/v3/kv/txn", 200, b"<html>")
    with pytest.raises(gw._NoGateway, match="not an etcd response"):
        gw._answer("/v3/kv/txn", 200, b'{"ok": true}')
    with pytest.raises(gw._InvalidToken):
        gw._answer("/v3/kv/txn", 401, error(16, "etcdserver: invalid auth token"))
    with pytest.raises(gw._EndpointFailed, match=r"^etcdserver: no leader$") as exc:
        gw._answer("/v3/kv/txn", 503, error(14, "etcdserver: no leader"))
    assert not isinstance(exc.value, gw._InvalidToken)


def test_range_ops_cover_each_prefix_at_a_revision() -> None:
    ops = gw.range_ops(["/a/", "/b\xff"], revision=42)
    assert ops[0] == {"request_range": {"key": "L2Ev", "range_end": "L2Ew", "revision": "42"}}
    assert gw._range_end(b"/b\xff") == b"/c"  # as etcd's clientv3.GetPrefixRangeEnd
    assert gw._range_end(b"\xff\xff") == b"\0"  # no end: every key from there
