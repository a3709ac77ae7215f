"""A command server on a UNIX socket that speaks HAProxy's CLI protocol: one command per
connection, answered after the client half-closes. For fakes and relays of HAProxy's sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path


class UnixCLI:
    """Serves `answer(command)` at `path`; an answer of None closes the connection without a
    word once the command is read (as a worker stopping in a reload does)."""

    def __init__(self, path: Path, answer: Callable[[str], str | None]) -> None:
        self.path, self.answer = path, answer
        self._closing = False
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._closing:
                conn.close()
                return
            # (one thread each: an answer may wait, as HAProxy's `_loadstatus` does)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            text = self.answer(data.decode().strip())
            if text is not None:
                with contextlib.suppress(OSError):  # the client gave up (its timeout)
                    conn.sendall(text.encode())

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(str(self.path))  # accept() does not return for a close
        self._thread.join(5)
        self._sock.close()
