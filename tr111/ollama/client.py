"""Ollama API client: streaming /api/generate stamped with perf_counter_ns at the socket
(tr111/ollama/wire.py: the request's first send, the read that delivered each line).

The client only stamps and parses; it never retries (orchestration does, and
only for TransientError). httpx's exception tree is mapped here, at the
boundary, onto tr111.errors.

Timeouts (from settings): connect, read (any single wait for bytes, capped by the whole-call
deadline), and the whole-call deadline itself, enforced while streaming by a watchdog that
shuts the socket down, so a stall or a trickle cannot outlive it.

Server values are validated, not trusted: the final chunk goes through
``metrics.check_final_chunk`` (an ImplausibleMetricsError is transient and becomes an error
row), and /api/ps and /api/show fields tr111 reads that do not conform become None with one
logged warning (``sanitize_ps_entry``, ``sanitize_show``).

``transport`` is the test seam: an ``httpx.MockTransport`` exercises parsing and error
mapping without a server (no socket: only the per-line deadline check applies then).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import socket
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Iterator

import httpx

from tr111.errors import (ModelNotFoundError, ServerUnavailableError, TerminalError,
                          Tr111Error, TransientError)
from tr111.ollama.metrics import MAX_COUNT, NS_PER_MS, CallResult, check_final_chunk, has_metrics
from tr111.ollama.wire import stamps_of, wire_transport

log = logging.getLogger(__name__)


class OllamaClient:
    """A thin, reusable connection to one server speaking the Ollama API."""

    def __init__(self, base_url: str, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 120.0, call_timeout_s: float = 900.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.call_timeout_s = call_timeout_s
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                write=connect_timeout_s, pool=connect_timeout_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  transport=transport if transport is not None else wire_transport())
        _WATCHDOG.ensure_started()  # now, not on the measured path of the first call

    @property
    def timeouts(self) -> dict[str, float | None]:
        """Connect, read and whole-call timeouts in seconds, as this client applies them."""
        t = self._http.timeout
        return {"connect_s": t.connect, "read_s": t.read, "call_s": self.call_timeout_s}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OllamaClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- small JSON endpoints -------------------------------------------------
    def version(self) -> str:
        return str(self._json("GET", "/api/version").get("version", ""))

    def show(self, model: str) -> dict:
        return sanitize_show(self._json("POST", "/api/show", {"model": model}))

    def ps(self) -> list[dict]:
        models = self._json("GET", "/api/ps").get("models") or []
        if not isinstance(models, list):
            log.warning("/api/ps: 'models' is not a list (%.80r); treated as empty", models)
            return []
        return [sanitize_ps_entry(e) for e in models if isinstance(e, dict)]

    def tags(self) -> list[dict]:
        return list(self._json("GET", "/api/tags").get("models") or [])

    def loaded(self, model: str) -> dict | None:
        """The /api/ps entry of ``model`` (name match with or without ':latest')."""
        wanted = {model, model if ":" in model else f"{model}:latest"}
        for entry in self.ps():
            if entry.get("name") in wanted or entry.get("model") in wanted:
                return entry
        return None

    def unload(self, model: str) -> None:
        """Empty prompt with keep_alive 0: Ollama's documented way to unload."""
        self._json("POST", "/api/generate", {"model": model, "prompt": "", "keep_alive": 0,
                                              "stream": False})

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        with _mapped_errors(path):
            resp = self._http.request(method, path, json=body)
            _raise_for_status(resp, path)
            try:
                payload = resp.json()
            except ValueError:
                raise TransientError(f"{path}: response is not JSON") from None
            if not isinstance(payload, dict):
                raise TransientError(f"{path}: response is not a JSON object")
            return payload

    # --- the measured call ----------------------------------------------------
    def generate(self, model: str, prompt: str, options: dict | None = None, *,
                 keep_alive: str | int | None = None) -> CallResult:
        """One streaming generate; returns a CallResult or raises with ``partial`` set.

        TTFT: the request's first byte sent -> the read that delivered the first chunk whose
        ``response`` is non-empty; wall: the same start -> the read that delivered the final
        chunk. Both are stamped at the socket (tr111/ollama/wire.py); on a transport without
        a socket (tests' MockTransport) they are stamped around httpx instead.
        """
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
        if options:
            body["options"] = options
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        result = CallResult(model=model, prompt=prompt, options=dict(options or {}),
                            started_at=datetime.now(UTC))
        pieces: list[str] = []
        first_text_ns: int | None = None
        deadline_ns = self.call_timeout_s * 1e9
        expired = threading.Event()
        timeout = self._call_timeout()
        t0 = time.perf_counter_ns()
        deadline_mono = time.monotonic() + self.call_timeout_s
        try:
            with _mapped_errors("/api/generate"):
                with self._http.stream("POST", "/api/generate", json=body, timeout=timeout) as resp:
                    guard = _WATCHDOG.arm(resp, deadline_mono, expired)
                    wire = stamps_of(resp)
                    if wire is not None:
                        t0 = wire.sent_ns  # the first byte of this request left here
                        result.ttft_clock = "socket"
                    try:
                        if resp.status_code >= 400:
                            resp.read()
                            _raise_for_status(resp, "/api/generate")
                        for line in resp.iter_lines():
                            now = time.perf_counter_ns() if wire is None else wire.received_ns
                            if now - t0 > deadline_ns:
                                raise TransientError(
                                    f"call exceeded its {self.call_timeout_s:g} s deadline")
                            if not line:
                                continue
                            chunk = _parse_line(line)
                            if "error" in chunk:
                                raise TransientError(f"server error mid-stream: {chunk['error']}")
                            text = chunk.get("response") or ""
                            result.chunks += 1
                            if text:
                                if result.ttft_ms is None:
                                    result.ttft_ms = (now - t0) / NS_PER_MS
                                    first_text_ns = now
                                pieces.append(text)
                            if chunk.get("done"):
                                result.wall_ms = (now - t0) / NS_PER_MS
                                if not has_metrics(chunk):
                                    raise TransientError("final chunk carries no metrics")
                                result.server = check_final_chunk(
                                    chunk, wall_ms=result.wall_ms, text_chunks=len(pieces),
                                    decode_ms=None if first_text_ns is None
                                    else (now - first_text_ns) / NS_PER_MS)
                                result.response = "".join(pieces)
                                return result
                    finally:  # before the connection goes back to the pool
                        _WATCHDOG.disarm(guard)
            raise TransientError("stream ended before the final chunk (done=true)")
        except Tr111Error as exc:
            elapsed_ns = time.perf_counter_ns() - t0
            result.response = "".join(pieces)
            result.wall_ms = elapsed_ns / NS_PER_MS
            result.status = "error"
            if ((expired.is_set() or elapsed_ns > deadline_ns) and type(exc) is TransientError
                    and "deadline" not in str(exc)):
                # the watchdog cut the stream, or a read capped by the deadline timed out
                late = TransientError(f"call exceeded its {self.call_timeout_s:g} s deadline ({exc})",
                                      partial=result)
                result.error = f"TransientError: {late}"
                raise late from None
            result.error = f"{type(exc).__name__}: {exc}"
            exc.partial = result
            raise

    def _call_timeout(self) -> httpx.Timeout:
        """The client's timeouts with no single wait longer than the whole-call deadline
        (so waiting for the response headers is bounded by it too)."""
        base = self._http.timeout
        read = self.call_timeout_s if base.read is None else min(base.read, self.call_timeout_s)
        return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


class _Watchdog:
    """Enforces whole-call deadlines while streaming: one daemon thread that shuts down the
    socket of a call past its deadline, so a stream that stalls or trickles without newlines
    cannot outlive it. Arming is a heap push (no thread start on the measured path); arming,
    disarming and firing share one lock, so a disarmed call's pooled connection is never cut.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, list]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tr111-call-deadline",
                                                daemon=True)
                self._thread.start()

    def arm(self, resp: httpx.Response, deadline: float, expired: threading.Event) -> list | None:
        """Watch ``resp``'s socket until ``deadline`` (time.monotonic()); None when the
        transport exposes no socket (the per-line deadline check still applies)."""
        stream = resp.extensions.get("network_stream")
        get_extra = getattr(stream, "get_extra_info", None)  # absent on mock/custom transports
        sock = get_extra("socket") if get_extra is not None else None
        if not hasattr(sock, "shutdown"):
            return None
        self.ensure_started()
        entry = [sock, expired, True]
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), entry))
            self._cond.notify()
        return entry

    def disarm(self, entry: list | None) -> None:
        if entry is not None:
            with self._cond:
                entry[2] = False

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][2][2]:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, entry = heapq.heappop(self._heap)
                sock, expired, _active = entry
                expired.set()
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_WATCHDOG = _Watchdog()


def _parse_line(line: str) -> dict:
    try:
        chunk = json.loads(line)
    except ValueError:
        raise TransientError(f"malformed NDJSON line: {line[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise TransientError(f"malformed NDJSON line: {line[:80]!r}")
    return chunk


def _conforms(value: object, kind: object) -> bool:
    """Does ``value`` have the type and range tr111 expects of a server field of ``kind``?"""
    if kind is str:
        return isinstance(value, str)
    if kind in ("bytes", "tokens"):
        bound = 2**63 if kind == "bytes" else MAX_COUNT
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "json":  # any JSON value but a non-finite number (NaN/Infinity)
        return not (isinstance(value, float) and not math.isfinite(value))
    return isinstance(value, dict)


_PS_FIELDS = {"name": str, "model": str, "digest": str, "expires_at": str, "size": "bytes",
              "size_vram": "bytes", "context_length": "tokens", "details": dict}
_SHOW_FIELDS = {"modified_at": str, "details": dict, "model_info": dict, "capabilities": "strs"}
_DETAIL_FIELDS = {"families": "strs"}  # every other detail is a string


def _info_kind(key: str) -> object:
    if key == "general.architecture":
        return str
    if key == "general.parameter_count":
        return "bytes"
    return "tokens" if key.endswith(".context_length") else "json"


def _sanitized(where: str, raw: dict, fields: dict) -> dict:
    """A copy of ``raw`` with each non-conforming field (and detail, model_info entry) None;
    one warning names them all."""
    out, nulled = dict(raw), []
    for name, kind in fields.items():
        if name in out and out[name] is not None and not _conforms(out[name], kind):
            nulled.append(f"{name}={out[name]!r:.60}")
            out[name] = None
    for name, kind_of in (("details", lambda k: _DETAIL_FIELDS.get(k, str)), ("model_info", _info_kind)):
        if isinstance(out.get(name), dict):
            inner = dict(out[name])
            for key, value in inner.items():
                if value is not None and not _conforms(value, kind_of(key)):
                    nulled.append(f"{name}.{key}={value!r:.60}")
                    inner[key] = None
            out[name] = inner
    if nulled:
        log.warning("%s: non-conforming fields stored as NULL: %s", where, ", ".join(nulled))
    return out


def sanitize_ps_entry(entry: dict) -> dict:
    """One /api/ps model entry with the fields tr111 reads type- and range-checked."""
    return _sanitized("/api/ps", entry, _PS_FIELDS)


def sanitize_show(show: dict) -> dict:
    """An /api/show answer with details, model_info, modified_at and capabilities checked."""
    return _sanitized("/api/show", show, _SHOW_FIELDS)


def _error_text(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error") or resp.text)
    except (ValueError, AttributeError):
        return resp.text[:200]


def _raise_for_status(resp: httpx.Response, path: str) -> None:
    code = resp.status_code
    if code < 400:
        return
    text = _error_text(resp)
    if code == 404:
        raise ModelNotFoundError(f"{path}: {text}")
    if code >= 500 or code in (408, 429):
        raise TransientError(f"{path}: HTTP {code}: {text}")
    raise TerminalError(f"{path}: HTTP {code}: {text}")


@contextmanager
def _mapped_errors(path: str) -> Iterator[None]:
    """httpx's exception tree -> transient / terminal (see httpx's exception docs)."""
    try:
        yield
    except Tr111Error:
        raise
    except httpx.ConnectError as exc:
        raise ServerUnavailableError(f"{path}: cannot connect: {exc}") from None
    except httpx.TimeoutException as exc:
        raise TransientError(f"{path}: timed out ({type(exc).__name__})") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise TransientError(f"{path}: stream dropped ({type(exc).__name__}: {exc})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{path}: transport error ({type(exc).__name__}: {exc})") from None
    except httpx.InvalidURL as exc:
        raise TerminalError(f"invalid server URL: {exc}") from None
