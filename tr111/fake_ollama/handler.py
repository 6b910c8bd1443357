"""HTTP request handling for the fake Ollama: routing, NDJSON streaming, fault injection.

Streams use chunked transfer encoding with one NDJSON line per HTTP chunk, written with
a single send on a TCP_NODELAY socket, so a client's ``iter_lines()`` sees every token
the moment it is written (what TTFT measurements need).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tr111.fake_ollama.faults import Fault, parse_keep_alive, wait_until
from tr111.fake_ollama.models import runner_options

if TYPE_CHECKING:
    from tr111.fake_ollama.server import FakeOllama

_FILLER = ("The", "benchmark", "measures", "latency", "and", "throughput", "of", "42",
           "tokens", "per", "second", "on", "a", "GPU", "with", "7", "ms", "overhead.")
_RUNNER_DIED = "llama runner process has terminated: exit status 2 (fake ollama fault)"
_ERRORS = {"http500": (500, "fake ollama: injected internal server error"),
           "http503": (503, "server busy, please try again.  maximum pending requests exceeded")}


def now_iso() -> str:
    """Ollama-style created_at: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def filler_word(index: int) -> str:
    """Token ``index`` of the deterministic response text (one word per token)."""
    word = _FILLER[index % len(_FILLER)]
    return word if index == 0 else " " + word


def _not_found(model: str) -> str:
    return f'model "{model}" not found, try pulling it first'


class FakeOllamaHandler(BaseHTTPRequestHandler):
    """One connection; ``self.server`` is the fake's _Server (``.fake``, ``.halt``)."""

    protocol_version = "HTTP/1.1"   # keep-alive and chunked streams, like Go's net/http
    disable_nagle_algorithm = True  # small NDJSON lines must not wait for ACKs
    server_version = "FakeOllama"
    sys_version = ""

    @property
    def fake(self) -> FakeOllama:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        self.fake.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake.untrack(self.connection)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Silent: tests and benchmarks read self.fake.requests instead."""

    # -- plumbing --------------------------------------------------------------------------

    def send_json(self, status: int, payload: object, rec: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_bytes(status, data, "application/json; charset=utf-8", rec)

    def send_bytes(self, status: int, data: bytes, content_type: str, rec: dict | None) -> None:
        if rec is not None:  # before the bytes leave, so a client that has them sees the record
            rec["status"] = status
            rec["t_done_ns"] = time.perf_counter_ns()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, rec: dict | None) -> None:
        self.send_json(status, {"error": message}, rec)

    def cut_connection(self) -> None:
        """Close abruptly: no (further) bytes, no chunked terminator."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- routes ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.fake.record("HEAD", urlsplit(self.path).path, None, time.perf_counter_ns())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        rec = self.fake.record("GET", path, None, time.perf_counter_ns())
        if path == "/":
            self.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8", rec)
        elif path == "/api/version":
            self.send_json(200, {"version": self.fake.version}, rec)
        elif path == "/api/tags":
            self.send_json(200, self.fake.tags_payload(), rec)
        elif path == "/api/ps":
            self.send_json(200, self.fake.ps_payload(), rec)
        else:
            self.send_bytes(404, b"404 page not found", "text/plain", rec)

    def do_POST(self) -> None:
        t_received = time.perf_counter_ns()
        path = urlsplit(self.path).path
        raw = self._read_body()
        try:
            body, parse_error = json.loads(raw or b"{}"), None
            if not isinstance(body, dict):
                body, parse_error = None, "json: cannot unmarshal into request object"
        except ValueError as exc:
            body, parse_error = None, f"invalid JSON body: {exc}"
        rec = self.fake.record("POST", path, body if body is not None
                               else raw.decode("utf-8", "replace"), t_received)
        if path in ("/api/generate", "/api/chat"):
            _Generation(self, rec, chat=path == "/api/chat").run(body, parse_error)
        elif path == "/api/show":
            self._show(body, parse_error, rec)
        else:
            self.send_bytes(404, b"404 page not found", "text/plain", rec)

    def _show(self, body: dict | None, parse_error: str | None, rec: dict) -> None:
        if parse_error:
            return self.send_error_json(400, parse_error, rec)
        name = body.get("model") or body.get("name") or ""
        info = self.fake.resolve_model(name) if name else None
        if info is None:
            return self.send_error_json(404, f"model '{name}' not found", rec)
        self.send_json(200, self.fake.show_payload(info), rec)


class _Generation:
    """One /api/generate or /api/chat request, from fault handling to the final chunk."""

    def __init__(self, handler: FakeOllamaHandler, rec: dict, chat: bool):
        self.handler = handler
        self.fake = handler.fake
        self.halt = handler.server.halt
        self.rec = rec
        self.chat = chat
        self.stream = True
        self.headers_sent = False
        self.response_complete = False  # set when a fault ended the response cleanly
        self.base: dict = {}  # fields every chunk starts with (the model name as requested)
        self._release = None  # finish_request for the model in use, called once
        rec.update(fault=None, t_first_chunk_ns=None, reloaded=False,
                   prompt_eval_count=None, eval_count=None, truncated=False, error=None)

    def run(self, body: dict | None, parse_error: str | None) -> None:
        fault = self.fake.next_fault(body)
        self.rec["fault"] = str(fault) if fault else None
        try:
            self._run(body, parse_error, fault)
        except OSError as exc:  # the client went away mid-response
            self.rec["error"] = f"client disconnected: {exc.__class__.__name__}"
            self.handler.close_connection = True
        finally:
            if self.rec["t_done_ns"] is None:  # cut or failed before the final bytes
                self.rec["t_done_ns"] = time.perf_counter_ns()

    def _run(self, body: dict | None, parse_error: str | None, fault: Fault | None) -> None:
        h = self.handler
        kind = fault.kind if fault else None
        if kind == "refuse":
            self.rec["error"] = "refused (fault)"
            return h.cut_connection()
        if kind in _ERRORS:
            return h.send_error_json(*_ERRORS[kind], self.rec)
        if parse_error:
            return h.send_error_json(400, parse_error, self.rec)
        name = body.get("model")
        if not isinstance(name, str) or not name.strip():
            return h.send_error_json(400, "model is required", self.rec)
        info = self.fake.resolve_model(name)
        if kind == "notfound" or info is None:
            return h.send_error_json(404, _not_found(name), self.rec)
        options = body.get("options") or {}
        if not isinstance(options, dict):
            return h.send_error_json(400, "options must be an object", self.rec)
        try:
            runner = runner_options(options)
            num_predict = options.get("num_predict")
            num_predict = None if num_predict is None else int(num_predict)
        except (TypeError, ValueError) as exc:
            return h.send_error_json(400, f"invalid option: {exc}", self.rec)
        keep_alive_s = parse_keep_alive(body.get("keep_alive"))
        self.stream = body.get("stream", True) is not False
        self.base = {"model": name}
        text = self._prompt_text(body)
        if text is None:
            return self._load_or_unload(info.name, runner, keep_alive_s)
        if not self.fake.acquire_slot(self.halt):
            return h.cut_connection()
        try:
            load_ns = self.fake.ensure_loaded(info.name, runner, self.halt)
            if load_ns is None:
                return h.cut_connection()
            self.rec["reloaded"] = load_ns > 0
            self._release = lambda: self.fake.finish_request(info.name, keep_alive_s)
            try:
                self._generate(text, num_predict, runner["num_ctx"], load_ns, fault)
            finally:
                self._release_model()
        finally:
            self.fake.release_slot()

    def _release_model(self) -> None:
        """Apply keep_alive once, before the final chunk, so a client that has read the
        final chunk of a keep_alive=0 request already sees the model gone from /api/ps."""
        release, self._release = self._release, None
        if release is not None and not self.halt.is_set():
            release()

    def _prompt_text(self, body: dict) -> str | None:
        """The text to "evaluate", or None for Ollama's empty-prompt load/unload request."""
        if self.chat:
            messages = body.get("messages") or []
            if not messages:
                return None
            return " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        prompt = body.get("prompt") or ""
        if not prompt:
            return None
        return f"{body.get('system') or ''} {prompt}"

    def _load_or_unload(self, model: str, runner: dict, keep_alive_s: float | None) -> None:
        if keep_alive_s == 0:
            self.fake.unload(model)
            reason = "unload"
        else:
            load_ns = self.fake.ensure_loaded(model, runner, self.halt)
            if load_ns is None:
                return self.handler.cut_connection()
            self.rec["reloaded"] = load_ns > 0
            self.fake.finish_request(model, keep_alive_s)
            reason = "load"
        payload = {**self._chunk(""), "done": True, "done_reason": reason}
        self.rec["t_first_chunk_ns"] = time.perf_counter_ns()
        self.handler.send_json(200, payload, self.rec)

    def _chunk(self, text: str) -> dict:
        content = ({"message": {"role": "assistant", "content": text}} if self.chat
                   else {"response": text})
        return {**self.base, "created_at": now_iso(), **content, "done": False}

    def _start_stream(self) -> None:
        """Streaming: send the 200 and NDJSON headers once (with the first line, like Ollama)."""
        if self.stream and not self.headers_sent:
            self.rec["status"] = 200
            self.handler.send_response(200)
            self.handler.send_header("Content-Type", "application/x-ndjson")
            self.handler.send_header("Transfer-Encoding", "chunked")
            self.handler.end_headers()
            self.headers_sent = True

    def _write_line(self, data: bytes) -> None:
        """Streaming: one NDJSON line as one HTTP chunk, i.e. one send on a NODELAY socket."""
        if not self.stream:
            return
        self._start_stream()
        if self.rec["t_first_chunk_ns"] is None:
            self.rec["t_first_chunk_ns"] = time.perf_counter_ns()
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _generate(self, text: str, num_predict: int | None, num_ctx: int, load_ns: int,
                  fault: Fault | None) -> None:
        """Prompt eval, tokens, final chunk; every duration reported is measured here."""
        timings = self.fake.timings
        kind = fault.kind if fault else None
        prompt_tokens = len(text.split()) + 1  # + BOS, like a real tokenizer
        if prompt_tokens > num_ctx:  # Ollama keeps the tail of the prompt that fits
            prompt_tokens = num_ctx
            self.rec["truncated"] = True
        prompt_ms = (timings.prompt_ms_per_token * prompt_tokens + timings.first_token_extra_ms
                     + (fault.arg if kind == "slow_first" else 0.0))
        t_prompt = time.perf_counter_ns()
        if not wait_until(t_prompt + int(prompt_ms * 1e6), self.halt):
            return self.handler.cut_connection()
        t_gen = time.perf_counter_ns()

        n_tokens, done_reason = timings.tokens, "stop"
        if num_predict is not None and 0 <= num_predict < n_tokens:  # < 0 means unlimited
            n_tokens, done_reason = num_predict, "length"
        emitted = self._emit_tokens(n_tokens, t_gen, fault)
        if emitted is None:
            return None if self.response_complete else self.handler.cut_connection()
        words, t_last = emitted
        self.rec.update(prompt_eval_count=prompt_tokens, eval_count=n_tokens)

        final = self._chunk("" if self.stream else "".join(words))
        final.update(done=True, done_reason=done_reason)
        if kind != "no_metrics":
            final.update(total_duration=time.perf_counter_ns() - self.rec["t_received_ns"],
                         load_duration=load_ns, prompt_eval_count=prompt_tokens,
                         prompt_eval_duration=t_gen - t_prompt, eval_count=n_tokens,
                         eval_duration=t_last - t_gen)
        if kind == "bad_metrics":  # a server whose counters cannot be trusted
            field, value = fault.final_override()
            final[field] = value
        self._release_model()
        if self.stream:
            self.rec["t_done_ns"] = time.perf_counter_ns()
            self._write_line(self._encode(final))
            self.handler.wfile.write(b"0\r\n\r\n")
            return
        data = self._encode(final).rstrip(b"\n")
        if kind == "garbage":
            data = data[: len(data) // 2]  # a truncated, unparsable JSON body
        self.rec["t_first_chunk_ns"] = time.perf_counter_ns()  # the single body is the first chunk
        self.handler.send_bytes(200, data, "application/json; charset=utf-8", self.rec)

    def _emit_tokens(self, n_tokens: int, t_gen: int,
                     fault: Fault | None) -> tuple[list[str], int] | None:
        """Token i goes out at t_gen + i * token_ms (+ jitter); deadlines, not sleeps, so
        errors do not accumulate. Applies the mid-stream faults. Returns (words, time of
        the last token), or None when the connection must be cut (drop, or going down)."""
        timings = self.fake.timings
        kind = fault.kind if fault else None
        drop_at = min(int(fault.arg), n_tokens) if kind in ("drop", "die") else None
        stall_at = min(2, n_tokens) if kind == "stall" else None
        midway = min(max(1, n_tokens // 2), n_tokens)
        garbage_at = midway if kind == "garbage" else None
        error_at = midway if kind == "error_chunk" else None
        rng = random.Random(timings.seed + self.rec["seq"])
        token_ns, jitter_ms = int(timings.token_ms * 1e6), timings.jitter_ms
        deadline, t_last, words = t_gen, t_gen, []
        for sent in range(n_tokens + 1):  # `sent` chunks are out: act on faults, then send one
            if sent == drop_at:
                self._start_stream()
                if kind == "die":  # the process crashed: this stream and the listener go
                    self.rec["error"] = f"server died after {sent} chunks (fault)"
                    threading.Thread(target=self.fake.go_down, name="fake-ollama-die",
                                     daemon=True).start()
                    return None
                self.rec["error"] = f"dropped after {sent} chunks (fault)"
                return None
            if sent == stall_at:
                self._start_stream()
                if self.halt.wait(fault.arg):
                    return None
            if sent == garbage_at:
                self._write_line(self.fake.garbage_line.rstrip(b"\n") + b"\n")
            if sent == error_at:  # what Ollama sends when the runner dies mid-generation
                self.rec["error"] = "error chunk (fault)"
                self._end_with_error(_RUNNER_DIED)
                return None
            if sent == n_tokens:
                break
            deadline += token_ns + (int(rng.uniform(0, jitter_ms) * 1e6) if jitter_ms else 0)
            if not wait_until(deadline, self.halt):
                return None
            words.append(self.fake.word(sent))
            self._write_line(self._encode(self._chunk(words[-1])))
            t_last = time.perf_counter_ns()
        return words, t_last

    def _end_with_error(self, message: str) -> None:
        """A complete response carrying only an error: a final NDJSON line when streaming
        (status stays 200, as headers are already out), a 500 otherwise."""
        self.response_complete = True
        if not self.stream:
            return self.handler.send_error_json(500, message, self.rec)
        self.rec["t_done_ns"] = time.perf_counter_ns()
        self._write_line(self._encode({"error": message}))
        self.handler.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _encode(payload: dict) -> bytes:
        return json.dumps(payload, separators=(",", ":")).encode() + b"\n"
