"""The HTTP side: Ollama's routes on the standard library's threading server.

``http.server`` keeps start-up fast (no framework import) and lets each
NDJSON line go straight to the socket: one ``sendall`` per token with
TCP_NODELAY, so streaming costs microseconds per token. A failed write means
the client left, and generation stops there.

Protection (limits.py): a connection waits for its next request at most the
idle timeout; every write has the write timeout, and a streaming client whose
bytes stop leaving the send queue for that long is dropped, so a reader that
never reads holds the scheduler's turn for seconds, not forever. Bodies over
the body limit get 413 unread; bad options and model names get 400.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tr111.errors import BadRequest, ClientGone, InsufficientMemory, ModelLoadError, PayloadTooLarge

from .api_models import VERSION, ResponseShape, dumps, metrics, ps_payload, show_payload, tags_payload
from .limits import EngineLimits, check_model_name, content_length, drain
from .models import ModelEntry, ModelRegistry
from .ndjson import NdjsonStream
from .options import RunnerOptions, parse_keep_alive, parse_options
from .runner import generate, tokenize
from .scheduler import Scheduler, release

log = logging.getLogger(__name__)

_ALIVE_CHECK_EVERY = 16  # text pieces between liveness checks on non-streamed requests
_JSON_TYPE_NAMES = {str: "string", bool: "bool", list: "array", dict: "object",
                    int: "number", float: "number", type(None): "null"}


class EngineHTTPServer(ThreadingHTTPServer):
    """Holds what the handlers share: models, the scheduler, default runner options."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: ModelRegistry, runner_defaults: RunnerOptions,
                 limits: EngineLimits | None = None) -> None:
        super().__init__(address, EngineRequestHandler)
        self.registry = registry
        self.runner_defaults = runner_defaults
        self.limits = limits or EngineLimits.build()
        self.scheduler = Scheduler(memory_limit_bytes=self.limits.memory_limit_bytes)

    def server_close(self) -> None:
        super().server_close()
        self.scheduler.close()


def chat_prompt(messages: list[dict]) -> str:
    """A plain-text transcript: the bundled base model has no chat template."""
    lines = [f"{message['role']}: {message['content']}" for message in messages]
    return "\n".join(lines) + "\nassistant:"


def _field(body: dict, name: str, kind: type, default: Any, struct: str) -> Any:
    """A request field of the JSON type Ollama's Go struct expects, else 400."""
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        wanted = _JSON_TYPE_NAMES.get(kind, "value")
        got = _JSON_TYPE_NAMES.get(type(value), "value")
        raise BadRequest(f"json: cannot unmarshal {got} into Go struct field {struct}.{name} of type {wanted}")
    return value


class EngineRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tr111-embedded"
    server: EngineHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.limits.idle_timeout_s  # StreamRequestHandler applies it
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """Wait for the next request line at most the idle timeout (stdlib closes on timeout)."""
        try:
            self.connection.settimeout(self.server.limits.idle_timeout_s)
        except OSError:
            self.close_connection = True
            return
        super().handle_one_request()

    def _writing(self) -> None:
        """From here on the socket is written: each write gets the write timeout."""
        self.connection.settimeout(self.server.limits.write_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- routing -----------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._writing()
        if self.path in ("/", "/api/version"):
            self._send_bytes(HTTPStatus.OK, b"", "text/plain; charset=utf-8")
        else:
            self._send_bytes(HTTPStatus.NOT_FOUND, b"", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        self._writing()
        route = self.path.split("?", 1)[0]
        if route == "/":
            self._send_bytes(HTTPStatus.OK, b"Ollama is running", "text/plain; charset=utf-8")
        elif route == "/api/version":
            self._send_json(HTTPStatus.OK, {"version": VERSION})
        elif route == "/api/tags":
            self._send_json(HTTPStatus.OK, tags_payload(self.server.registry.entries()))
        elif route == "/api/ps":
            self._send_json(HTTPStatus.OK, ps_payload(self.server.scheduler.running()))
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "404 page not found"})

    def do_POST(self) -> None:
        started_ns = time.perf_counter_ns()
        route = self.path.split("?", 1)[0]
        handlers = {"/api/generate": self._generate, "/api/chat": self._chat, "/api/show": self._show}
        handler = handlers.get(route)
        try:
            if handler is None:
                self._discard_body()
                self._writing()
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "404 page not found"})
                return
            body = self._read_json()
            self._writing()
            handler(body, started_ns)
        except PayloadTooLarge as exc:
            self._refuse_body(exc)
        except BadRequest as exc:  # OptionError included
            self._writing()
            self._send_json(exc.status, {"error": str(exc)})
        except TimeoutError:  # the body stalled past the idle timeout
            log.info("request body not received within %.1f s; connection closed",
                     self.server.limits.idle_timeout_s)
            self.close_connection = True

    # -- endpoints ---------------------------------------------------------------

    def _show(self, body: dict, started_ns: int) -> None:
        name = _field(body, "model", str, "", "ShowRequest") or _field(body, "name", str, "", "ShowRequest")
        entry = self._lookup(name)
        if entry is not None:
            self._send_json(HTTPStatus.OK, show_payload(entry))

    def _generate(self, body: dict, started_ns: int) -> None:
        struct = "GenerateRequest"
        name = _field(body, "model", str, "", struct)
        prompt = _field(body, "prompt", str, "", struct)
        system = _field(body, "system", str, "", struct)
        template = _field(body, "template", str, "", struct)
        raw = _field(body, "raw", bool, False, struct)
        if system and not raw:
            prompt = f"{system}\n\n{prompt}" if prompt else prompt
        if template and not raw and prompt:
            prompt = template.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)
        self._complete(body, struct, name, prompt, started_ns, chat=False, with_context=not raw)

    def _chat(self, body: dict, started_ns: int) -> None:
        struct = "ChatRequest"
        name = _field(body, "model", str, "", struct)
        messages = _field(body, "messages", list, [], struct)
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role", ""), str) \
                    or not isinstance(message.get("content", ""), str):
                raise BadRequest("json: cannot unmarshal messages: each needs string role and content")
        normalized = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in messages]
        prompt = chat_prompt(normalized) if normalized else ""
        self._complete(body, struct, name, prompt, started_ns, chat=True, with_context=False)

    # -- the generation path shared by generate and chat -------------------------

    def _complete(self, body: dict, struct: str, name: str, prompt: str, started_ns: int,
                  chat: bool, with_context: bool) -> None:
        stream = _field(body, "stream", bool, True, struct)
        keep_alive_given = body.get("keep_alive") is not None
        keep_alive_ns = parse_keep_alive(body.get("keep_alive"))
        runner_options, sampling = parse_options(body.get("options"), self.server.runner_defaults)
        entry = self._lookup(name)
        if entry is None:
            return
        shape = ResponseShape(name, chat)
        scheduler = self.server.scheduler
        if not prompt and keep_alive_given and keep_alive_ns == 0:
            scheduler.unload(entry)
            self._send_json(HTTPStatus.OK, shape.final("", "unload"))
            return
        with scheduler.turn():
            if not self._client_alive():
                log.info("client left while queued; skipping request")
                self.close_connection = True
                return
            try:
                loaded, load_ns = scheduler.ensure_loaded(entry, runner_options, keep_alive_ns)
            except (ModelLoadError, InsufficientMemory) as exc:
                log.warning("load refused: %s", exc)
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
                return
            to_release = None
            try:
                if not prompt:
                    to_release = scheduler.finish(loaded, keep_alive_ns)
                    self._send_json(HTTPStatus.OK, shape.final("", "load"))
                    return
                self._run_generation(loaded, prompt, sampling, shape, stream, started_ns, load_ns,
                                     keep_alive_ns, with_context)
            finally:
                if to_release is None:
                    to_release = scheduler.finish(loaded, keep_alive_ns) if loaded.busy else None
                release(to_release)

    def _run_generation(self, loaded, prompt, sampling, shape: ResponseShape, stream: bool,
                        started_ns: int, load_ns: int, keep_alive_ns: int, with_context: bool) -> None:
        scheduler = self.server.scheduler
        pieces: list[str] = []
        streamer = NdjsonStream(self) if stream else None

        def on_text(text: str) -> None:
            if streamer is not None:
                streamer.write_line(shape.token_line(text))
                return
            pieces.append(text)
            if len(pieces) % _ALIVE_CHECK_EVERY == 0 and not self._client_alive():
                raise ClientGone()

        try:
            tokens = tokenize(loaded, prompt, sampling.num_keep)
            result = generate(loaded, tokens, sampling, on_text)
        except ClientGone as exc:
            log.info("client disconnected; generation stopped%s", f" ({exc})" if str(exc) else "")
            self.close_connection = True
            return
        except (RuntimeError, ValueError) as exc:
            log.exception("generation failed")
            self._fail(streamer, str(exc))
            return
        extra: dict[str, Any] = {}
        if with_context:
            extra["context"] = result.context
        extra.update(metrics(result, time.perf_counter_ns() - started_ns, load_ns))
        # keep_alive 0: leave /api/ps before the client sees ``done`` (freed after the write).
        pending_release = scheduler.finish(loaded, keep_alive_ns)
        final = shape.final("" if stream else "".join(pieces), result.done_reason, extra)
        try:
            if streamer is not None:
                streamer.write_line((dumps(final) + "\n").encode("utf-8"))
                streamer.close()
            else:
                self._send_json(HTTPStatus.OK, final)
        except ClientGone:
            self.close_connection = True
        finally:
            release(pending_release)

    # -- helpers -----------------------------------------------------------------

    def _lookup(self, name: str) -> ModelEntry | None:
        """The model, or a 400/404 answer already sent (None)."""
        if not name:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "model is required"})
            return None
        check_model_name(name)  # 400, before the name is used anywhere
        entry = self.server.registry.get(name)
        if entry is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"model '{name}' not found"})
        return entry

    def _read_json(self) -> dict:
        length = content_length(self.headers.get("Content-Length"))
        limit = self.server.limits.max_body_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked(limit)
        else:
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body too large: {length} bytes, the limit is {limit} bytes",
                                      partial=length)
            raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            raise BadRequest("missing request body")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest(f"json: cannot unmarshal {_JSON_TYPE_NAMES.get(type(body), 'value')} "
                             "into Go value of type request object")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError as exc:
                raise BadRequest("invalid chunked request body") from exc
            if size == 0:
                for _ in range(100):
                    if self.rfile.readline(1024) in (b"\r\n", b"\n", b""):
                        break
                return b"".join(parts)
            total += size
            if size < 0 or total > limit:
                raise PayloadTooLarge(f"request body too large: over {limit} bytes, the limit is {limit} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _discard_body(self) -> None:
        """Throw away the body of a request that needs none (not kept in memory)."""
        length = content_length(self.headers.get("Content-Length"))
        if length and length > self.server.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body too large: {length} bytes, "
                                  f"the limit is {self.server.limits.max_body_bytes} bytes", partial=length)
        if length:
            drain(self.rfile, length)

    def _refuse_body(self, exc: PayloadTooLarge) -> None:
        """413 now, then read and drop what the client is still sending (bounded), then close.

        Reading it means a client that writes the whole body before reading
        (most do) sees the 413 rather than a connection reset.
        """
        log.warning("%s", exc)
        self._writing()
        self.close_connection = True
        self._send_json(exc.status, {"error": str(exc)})
        length = exc.partial if isinstance(exc.partial, int) else None
        drain(self.rfile, length)

    def _client_alive(self) -> bool:
        """False once the peer has closed its side (a readable socket with no data)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _send_json(self, status: int, payload: dict) -> None:
        self._send_bytes(status, dumps(payload).encode("utf-8"), "application/json; charset=utf-8")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # broken pipe, reset, or the write timeout
            self.close_connection = True

    def _fail(self, streamer: NdjsonStream | None, message: str) -> None:
        """Ollama sends an error object in the stream once streaming has begun."""
        if streamer is not None and streamer.started:
            try:
                streamer.write_line((dumps({"error": message}) + "\n").encode("utf-8"))
                streamer.close()
            except ClientGone:
                self.close_connection = True
        else:
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})
