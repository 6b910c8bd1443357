"""Ollama API client: streaming /api/generate stamped with perf_counter_ns.

The client only stamps and parses; it never retries (orchestration does, and
only for TransientError). httpx's exception tree is mapped here, at the
boundary, onto tr111.errors.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Iterator

import httpx

from tr111.errors import (ModelNotFoundError, ServerUnavailableError, TerminalError,
                          Tr111Error, TransientError)
from tr111.metrics import CallResult, ServerMetrics, has_metrics

NS_PER_MS = 1_000_000


class OllamaClient:
    """A thin, reusable connection to one server speaking the Ollama API."""

    def __init__(self, base_url: str, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 120.0, call_timeout_s: float = 900.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.call_timeout_s = call_timeout_s
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                write=connect_timeout_s, pool=connect_timeout_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

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
        return self._json("POST", "/api/show", {"model": model})

    def ps(self) -> list[dict]:
        return list(self._json("GET", "/api/ps").get("models") or [])

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
                return resp.json()
            except ValueError:
                raise TransientError(f"{path}: response is not JSON") from None

    # --- the measured call ----------------------------------------------------
    def generate(self, model: str, prompt: str, options: dict | None = None, *,
                 keep_alive: str | int | None = None) -> CallResult:
        """One streaming generate; returns a CallResult or raises with ``partial`` set.

        TTFT: request sent -> first chunk whose ``response`` is non-empty.
        wall: request sent -> final chunk parsed.
        """
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
        if options:
            body["options"] = options
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        result = CallResult(model=model, prompt=prompt, options=dict(options or {}),
                            started_at=datetime.now(UTC))
        pieces: list[str] = []
        deadline_ns = self.call_timeout_s * 1e9
        t0 = time.perf_counter_ns()
        try:
            with _mapped_errors("/api/generate"):
                with self._http.stream("POST", "/api/generate", json=body) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        _raise_for_status(resp, "/api/generate")
                    for line in resp.iter_lines():
                        now = time.perf_counter_ns()
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
                            pieces.append(text)
                        if chunk.get("done"):
                            result.wall_ms = (now - t0) / NS_PER_MS
                            if not has_metrics(chunk):
                                raise TransientError("final chunk carries no metrics")
                            result.server = ServerMetrics.from_final_chunk(chunk)
                            result.response = "".join(pieces)
                            return result
            raise TransientError("stream ended before the final chunk (done=true)")
        except Tr111Error as exc:
            result.response = "".join(pieces)
            result.wall_ms = (time.perf_counter_ns() - t0) / NS_PER_MS
            result.status = "error"
            result.error = f"{type(exc).__name__}: {exc}"
            exc.partial = result
            raise


def _parse_line(line: str) -> dict:
    try:
        chunk = json.loads(line)
    except ValueError:
        raise TransientError(f"malformed NDJSON line: {line[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise TransientError(f"malformed NDJSON line: {line[:80]!r}")
    return chunk


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
