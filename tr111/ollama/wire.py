"""The wire clock: TTFT and wall time stamped at the socket, not around httpx.

Stamped around ``httpx.Client.stream`` and ``iter_lines``, a call's TTFT also holds httpx's own
work: building and serializing the request before any byte leaves (~0.7 ms median on the 2-core
development VM) and h11 parsing, decoding and line splitting after the first token's bytes have
arrived (~1 ms). That is the client's Python, not the server, and it varies with whatever else
holds the CPU. So the socket of every connection tr111 opens is wrapped: the first ``send`` of a
request stamps ``sent_ns`` and every ``recv`` stamps ``received_ns`` (``time.perf_counter_ns``,
taken right at the system call). ``OllamaClient.generate`` measures from ``sent_ns`` to the
``received_ns`` of the read that delivered a line; lines are parsed lazily, one read at a time,
so the latest read is the one that completed the line (docs/performance.md, section 7).

HTTP/1.1 keep-alive puts one request at a time on a connection and reads its whole response
before the next request is written, so "the first write after a read" is the start of a request.

httpx exposes no hook for its network backend: ``wire_transport`` builds an ordinary
``httpx.HTTPTransport`` and wraps the backend of the httpcore pool it keeps (``_pool``, stable
across httpx 0.18-0.28; pyproject pins the range and ``tests/test_wire_clock.py`` checks it).
"""

from __future__ import annotations

import time
import typing

import httpcore
import httpx

from tr111.errors import TerminalError


class WireStamps:
    """One connection's stamps (perf_counter_ns): its current request's first send, its last read,
    and whether a request is being written (reset by the next read)."""

    __slots__ = ("sent_ns", "received_ns", "writing")

    def __init__(self) -> None:
        self.sent_ns: int | None = None
        self.received_ns: int | None = None
        self.writing = False


class _StampedStream(httpcore.NetworkStream):
    """A connection's stream that stamps its first write per request and every read."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self.stamps = WireStamps()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        stamps = self.stamps
        stamps.received_ns = time.perf_counter_ns()
        stamps.writing = False
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        stamps = self.stamps
        if not stamps.writing:
            stamps.writing = True
            stamps.sent_ns = time.perf_counter_ns()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _StampedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _StampingBackend(httpcore.NetworkBackend):
    """httpcore's backend, every stream it opens wrapped in a _StampedStream."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: typing.Iterable | None = None) -> httpcore.NetworkStream:
        return _StampedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable | None = None) -> httpcore.NetworkStream:
        return _StampedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def wire_transport() -> httpx.HTTPTransport:
    """An httpx transport whose connections stamp their reads and writes (see module doc)."""
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
        raise TerminalError(f"httpx {httpx.__version__} keeps its connection pool differently; "
                            "tr111's wire clock needs httpx 0.27-0.28 (pip install 'httpx<0.29')")
    pool._network_backend = _StampingBackend(pool._network_backend)
    return transport


def stamps_of(response: httpx.Response) -> WireStamps | None:
    """The wire stamps of the connection that carries ``response``; None on other transports
    (and on a stamped one that never wrote a request)."""
    stream = response.extensions.get("network_stream")
    if isinstance(stream, _StampedStream) and stream.stamps.sent_ns is not None:
        return stream.stamps
    return None
