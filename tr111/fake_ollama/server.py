"""A fake Ollama server: real HTTP on loopback, Ollama's wire format, scripted timings and faults.

Why: the client, the sweeps and the benchmark harness need an Ollama that answers in
milliseconds, deterministically, and that can be told to fail in each way a real one
does (5xx, dropped streams, stalls, garbage, a dead process) — without a GPU or a model.

Timing model, per generate/chat request (all sleeps measured with perf_counter_ns):
  load_ms (only on a (re)load) -> prompt_ms_per_token * prompt_eval_count
  + first_token_extra_ms (+ slow_first fault) -> token i sent at gen_start + i * token_ms
so eval_count / eval_duration == 1000 / token_ms tokens/s, and the reported durations
are the server-side time actually spent.

    with FakeOllama(FakeTimings(token_ms=2)) as fake:
        httpx.post(f"{fake.url}/api/generate", json={"model": "gemma3", "prompt": "hi"})

Command line: ``python -m tr111.fake_ollama --port 11434 --token-ms 2``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer

from tr111.fake_ollama.faults import FAULT_NAMES, Fault, parse_fault, wait_until
from tr111.fake_ollama.handler import FakeOllamaHandler, filler_word, now_iso
from tr111.fake_ollama.models import ModelInfo, canonical_name, model_info

__all__ = ["FAULT_NAMES", "FakeOllama", "FakeTimings", "main"]

_FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # what Ollama shows for keep_alive < 0


@dataclass
class FakeTimings:
    """Server-side costs, in milliseconds; see the module docstring for where each is paid."""

    load_ms: float = 20.0               # first request, model change, runner-option change, after unload
    prompt_ms_per_token: float = 0.05   # per prompt_eval_count token
    first_token_extra_ms: float = 0.0   # between prompt eval and generation
    token_ms: float = 1.0               # per generated token
    tokens: int = 16                    # tokens generated when num_predict does not cap them
    jitter_ms: float = 0.0              # uniform [0, jitter_ms) added to each token, seeded
    seed: int = 0                       # jitter seed; request i uses seed + i


class _Server(ThreadingHTTPServer):
    """One listening socket; replaced on come_up(). ``halt`` ends its in-flight handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeOllama):
        self.fake = fake
        self.halt = threading.Event()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, FakeOllamaHandler)

    def handle_error(self, request, client_address) -> None:
        """A client hanging up is routine here; anything else is a bug in the fake: print
        it and keep it in ``fake.handler_errors`` so tests can fail on it."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            self.fake.handler_errors.append(traceback.format_exc())
            super().handle_error(request, client_address)


class FakeOllama:
    """The fake server; thread-safe, usable as a context manager. See the module docstring.

    Faults for inject() and inject_when() (parameter after a colon): http500, http503,
    notfound, refuse, drop:N, stall:S, garbage, error_chunk, no_metrics, slow_first:MS,
    die:N (the server goes down mid-stream until come_up()) — see
    tr111.fake_ollama.faults.FAULT_PARAMS. ``response_text`` replaces the streamed filler words;
    ``garbage_line`` is the line the garbage fault sends. ``num_parallel`` queues requests beyond that many,
    like OLLAMA_NUM_PARALLEL (queue time shows in total_duration only, as in Ollama).
    """

    def __init__(self, timings: FakeTimings | None = None,
                 models: tuple[str, ...] | list[str] = ("gemma3:latest", "gemma3:270m"),
                 host: str = "127.0.0.1", port: int = 0, version: str = "0.12.0-fake",
                 num_parallel: int | None = None):
        self.timings = timings or FakeTimings()
        self.models: dict[str, ModelInfo] = {canonical_name(m): model_info(m) for m in models}
        self.host = host
        self.port = port
        self.version = version
        self.requests: list[dict] = []   # every request; keys documented in record()
        self.generate_calls = 0          # POST /api/generate received (including faulted ones)
        self.chat_calls = 0              # POST /api/chat received
        self.loads = 0                   # model (re)loads performed
        self.handler_errors: list[str] = []  # tracebacks of bugs in the fake itself
        self._faults: deque[Fault] = deque()
        self._matched_faults: list[tuple[object, deque[Fault]]] = []  # inject_when()
        self.response_text: str | None = None  # tokens to stream instead of the filler words
        self.garbage_line: bytes = b'{"model": "garbage", "response": <<not json>>'
        self._lock = threading.Lock()        # counters, faults, _loaded, connections
        self._load_lock = threading.Lock()   # one load at a time, like Ollama's scheduler
        self._loaded: dict | None = None
        self._in_flight = 0
        self._slots = threading.BoundedSemaphore(num_parallel) if num_parallel else None
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._modified_at = now_iso()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> FakeOllama:
        """Bind (port 0 picks a free port, kept for come_up) and serve in a daemon thread."""
        self.come_up()
        return self

    def stop(self) -> None:
        self.go_down()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def come_up(self) -> None:
        """(Re)open the listening socket on the same port; a no-op when already up."""
        if self._server is not None:
            return
        deadline = time.monotonic() + 2.0
        while True:
            try:
                server = _Server((self.host, self.port), self)
                break
            except OSError:  # the old socket may linger for a moment after go_down
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"fake-ollama-{self.port}", daemon=True)
        self._thread.start()

    def go_down(self) -> None:
        """Simulate the Ollama process dying: refuse new connections, cut open ones, forget
        the loaded model. Delays in progress (load, tokens, stall) end at once."""
        server, self._server = self._server, None
        if server is None:
            return
        server.halt.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
            self._loaded = None
            self._in_flight = 0  # halted handlers skip finish_request
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    # -- test controls -----------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        """Queue faults; each is consumed by the next /api/generate or /api/chat, in order."""
        parsed = [parse_fault(f) for f in faults]  # all-or-nothing on a typo
        with self._lock:
            self._faults.extend(parsed)

    def inject_when(self, match, *faults: str) -> None:
        """Queue faults for the next generate/chat requests that ``match``, in order.

        ``match`` is a substring of the prompt (or chat messages) or a callable taking the
        parsed request body. Matched faults take precedence over inject()'s queue; a request
        that matches nothing consumes from that queue as usual. Lets a test put a fault in
        a chosen run (e.g. by the run's cache-bust line) however earlier retries went.
        """
        parsed = deque(parse_fault(f) for f in faults)
        if not isinstance(match, str) and not callable(match):
            raise TypeError("match must be a prompt substring or a callable(body) -> bool")
        with self._lock:
            self._matched_faults.append((match, parsed))

    @property
    def pending_faults(self) -> list[str]:
        with self._lock:
            return [str(f) for f in self._faults] + [
                str(f) for _, queue in self._matched_faults for f in queue]

    @property
    def loaded(self) -> dict | None:
        """{"model", "options" (runner options), "context_length", "expires_at"} or None."""
        with self._lock:
            self._expire_if_due()
            if self._loaded is None:
                return None
            return {"model": self._loaded["model"], "options": dict(self._loaded["options"]),
                    "context_length": self._loaded["options"]["num_ctx"],
                    "expires_at": self._expires_at_iso()}

    # -- used by the request handler -----------------------------------------------------

    def record(self, method: str, path: str, body: object, t_received_ns: int) -> dict:
        """Append and return the record of one request.

        Keys, all times perf_counter_ns (the client's clock when in-process):
          seq (index in requests), method, path, body (parsed JSON, or raw text if not JSON),
          status (HTTP status; None if the connection was cut first), t_received_ns,
          t_done_ns (just before the last bytes were sent, or when the request was cut);
        generate/chat add: fault (str or None), t_first_chunk_ns (just before the first
          NDJSON line, or the single body, was sent), reloaded, prompt_eval_count,
          eval_count, truncated (prompt longer than num_ctx), error (why it was cut).
        """
        rec = {"method": method, "path": path, "body": body, "t_received_ns": t_received_ns,
               "t_done_ns": None, "status": None}
        with self._lock:
            rec["seq"] = len(self.requests)
            self.requests.append(rec)
            if method == "POST" and path == "/api/generate":
                self.generate_calls += 1
            elif method == "POST" and path == "/api/chat":
                self.chat_calls += 1
        return rec

    def next_fault(self, body: object = None) -> Fault | None:
        with self._lock:
            for index, (match, queue) in enumerate(self._matched_faults):
                if _matches(match, body):
                    fault = queue.popleft()
                    if not queue:
                        del self._matched_faults[index]
                    return fault
            return self._faults.popleft() if self._faults else None

    def word(self, index: int) -> str:
        """Token ``index`` of the streamed text: response_text's words if set, else filler."""
        if self.response_text is None:
            return filler_word(index)
        words = self.response_text.split(" ") or [""]
        word = words[index % len(words)]
        return word if index == 0 else " " + word

    def resolve_model(self, name: str) -> ModelInfo | None:
        return self.models.get(canonical_name(name))

    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def acquire_slot(self, halt: threading.Event) -> bool:
        """Queue for a parallel slot when num_parallel is set (Ollama's OLLAMA_NUM_PARALLEL)."""
        if self._slots is None:
            return True
        while not self._slots.acquire(timeout=0.02):
            if halt.is_set():
                return False
        return True

    def release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def ensure_loaded(self, model: str, options: dict[str, int], halt: threading.Event) -> int | None:
        """Load ``model`` with these runner options unless already loaded that way.

        Returns the nanoseconds spent loading (0 when nothing was loaded), None if halted.
        """
        with self._load_lock:
            with self._lock:
                self._expire_if_due()
                current = self._loaded
                if current and current["model"] == model and current["options"] == options:
                    current["expires_mono"] = None  # never expires while in use
                    self._in_flight += 1
                    return 0
                self._loaded = None  # the old runner is stopped before the new one starts
            started = time.perf_counter_ns()
            if not wait_until(started + int(self.timings.load_ms * 1e6), halt):
                return None
            load_ns = time.perf_counter_ns() - started
            with self._lock:
                self._loaded = {"model": model, "options": dict(options), "expires_mono": None}
                self.loads += 1
                self._in_flight += 1
            return load_ns

    def finish_request(self, model: str, keep_alive_s: float | None) -> None:
        """After a response: unload on keep_alive 0, otherwise (re)arm the expiry timer."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if self._loaded is None or self._loaded["model"] != model:
                return
            if keep_alive_s == 0:
                self._loaded = None
            elif self._in_flight == 0:
                self._loaded["expires_mono"] = (None if keep_alive_s is None
                                                else time.monotonic() + keep_alive_s)

    def unload(self, model: str) -> None:
        with self._lock:
            if self._loaded is not None and self._loaded["model"] == model:
                self._loaded = None

    def tags_payload(self) -> dict:
        return {"models": [m.tags_entry(self._modified_at) for m in self.models.values()]}

    def show_payload(self, info: ModelInfo) -> dict:
        return info.show_payload(self._modified_at)

    def ps_payload(self) -> dict:
        with self._lock:
            self._expire_if_due()
            if self._loaded is None:
                return {"models": []}
            info = self.models[self._loaded["model"]]
            num_ctx = self._loaded["options"]["num_ctx"]
            expires_at = self._expires_at_iso()
        kv_cache_bytes = num_ctx * 64 * 1024  # a bigger context costs memory, as in Ollama
        size = info.size_bytes + kv_cache_bytes
        return {"models": [{"name": info.name, "model": info.name, "size": size,
                            "digest": info.digest, "details": info.details,
                            "expires_at": expires_at, "size_vram": size,
                            "context_length": num_ctx}]}

    def _expire_if_due(self) -> None:
        """Caller holds _lock. Lazily unloads a model whose keep_alive ran out."""
        if self._loaded and self._in_flight == 0:
            expires = self._loaded.get("expires_mono")
            if expires is not None and time.monotonic() >= expires:
                self._loaded = None

    def _expires_at_iso(self) -> str:
        """Caller holds _lock and checked _loaded."""
        expires = self._loaded.get("expires_mono")
        if expires is None:
            return (_FOREVER if self._in_flight == 0 else datetime.now(timezone.utc)
                    + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        wall = datetime.now(timezone.utc) + timedelta(seconds=expires - time.monotonic())
        return wall.isoformat().replace("+00:00", "Z")


def _matches(match: object, body: object) -> bool:
    if not isinstance(body, dict):
        return False
    if callable(match):
        try:
            return bool(match(body))
        except Exception:  # a test's predicate must not kill the handler
            return False
    text = body.get("prompt")
    if text is None:
        text = " ".join(str(m.get("content") or "") for m in body.get("messages") or []
                        if isinstance(m, dict))
    return isinstance(text, str) and match in text


def main(argv: list[str] | None = None) -> int:
    """Run a fake Ollama until Ctrl-C; prints its URL on the first line of stdout."""
    parser = argparse.ArgumentParser(prog="python -m tr111.fake_ollama",
                                     description="Fake Ollama server for tests and benchmarks.")
    defaults = FakeTimings()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--load-ms", type=float, default=defaults.load_ms)
    parser.add_argument("--prompt-ms-per-token", type=float, default=defaults.prompt_ms_per_token)
    parser.add_argument("--first-token-extra-ms", type=float, default=defaults.first_token_extra_ms)
    parser.add_argument("--token-ms", type=float, default=defaults.token_ms)
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--jitter-ms", type=float, default=defaults.jitter_ms)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", action="append", dest="models",
                        help="a model to serve (repeatable); default gemma3:latest, gemma3:270m")
    parser.add_argument("--parallel", type=int, default=None,
                        help="requests served at once; others queue (default: unlimited)")
    parser.add_argument("--fault", action="append", default=[],
                        help=f"queue a fault (repeatable): {', '.join(FAULT_NAMES)}")
    parser.add_argument("--version-string", default="0.12.0-fake")
    args = parser.parse_args(argv)
    timings = FakeTimings(load_ms=args.load_ms, prompt_ms_per_token=args.prompt_ms_per_token,
                          first_token_extra_ms=args.first_token_extra_ms, token_ms=args.token_ms,
                          tokens=args.tokens, jitter_ms=args.jitter_ms, seed=args.seed)
    fake = FakeOllama(timings, models=tuple(args.models or ("gemma3:latest", "gemma3:270m")),
                      host=args.host, port=args.port, version=args.version_string,
                      num_parallel=args.parallel)
    try:
        fake.inject(*args.fault)
    except ValueError as exc:
        parser.error(str(exc))
    fake.start()
    print(fake.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0

