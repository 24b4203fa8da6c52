"""A TCP server that accepts every connection and never sends a byte: the hostile S3 endpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class SilentServer:
    """Accepts connections (counted in `accepted`), reads nothing, answers nothing, closes
    nothing until closed: a client waits for its own timeouts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in [*self.accepted, self.sock]:
            conn.close()


def serving() -> Iterator[SilentServer]:
    """For a fixture: `yield from serving()`."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()
