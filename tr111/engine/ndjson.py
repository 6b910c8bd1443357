"""A streamed NDJSON body (chunked), written straight to the socket, one line per token.

Every write has the engine's write timeout, and a StallGuard notices a client
that has stopped reading; either raises ClientGone, which stops generation.
"""

from __future__ import annotations

from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from tr111.errors import ClientGone

from .limits import StallGuard


class NdjsonStream:
    """Chunked NDJSON body; headers go out with the first line, as in Ollama."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._handler = handler
        self._socket = handler.connection
        self._timeout_s = handler.server.limits.write_timeout_s
        self._guard = StallGuard(self._socket, self._timeout_s)
        self.started = False

    def write_line(self, line: bytes) -> None:
        try:
            if not self.started:
                self._handler.send_response(HTTPStatus.OK)
                self._handler.send_header("Content-Type", "application/x-ndjson")
                self._handler.send_header("Transfer-Encoding", "chunked")
                self._handler.end_headers()
                self.started = True
            chunk = b"%x\r\n%b\r\n" % (len(line), line)
            self._socket.sendall(chunk)
        except TimeoutError as exc:
            raise ClientGone(f"no bytes accepted for {self._timeout_s:g} s") from exc
        except OSError as exc:  # BrokenPipe, ConnectionReset
            raise ClientGone() from exc
        if not self._guard.wrote(len(chunk)):
            raise ClientGone(f"client stopped reading for {self._timeout_s:g} s")

    def close(self) -> None:
        try:
            self._socket.sendall(b"0\r\n\r\n")
        except OSError as exc:
            raise ClientGone() from exc
