"""The timed call runs in a process of its own, where no orchestrator thread competes with it.

Prefect's background threads (event and log shippers, the API client) share the GIL with
whatever thread streams the response, and add about a millisecond to a measured TTFT
(docs/performance.md). guidellm and AIPerf time requests in worker processes apart from
their schedulers; tr111 does the same: one measurement worker per sweep owns the
keep-alive connection and does nothing but the timed streaming call. The Prefect task
sends it (model, prompt, options) over a pipe and gets the CallResult back; retries,
rows and the DAG stay where they were. The worker never touches the warehouse.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection

from tr111.errors import TransientError
from tr111.ollama.client import OllamaClient
from tr111.ollama.metrics import CallResult

GRACE_S = 30.0  # past the whole-call deadline the worker enforces itself, the pipe wait gives up
_STOP = None


def _serve(conn: Connection, base_url: str, timeouts: dict) -> None:
    """The worker's loop: one call at a time, results (or the error, pickled) back."""
    with OllamaClient(base_url, connect_timeout_s=timeouts["connect_s"], read_timeout_s=timeouts["read_s"],
                      call_timeout_s=timeouts["call_s"]) as client:
        conn.send(("ready", None))
        while True:
            try:
                request = conn.recv()
            except (EOFError, KeyboardInterrupt):
                return
            if request is _STOP:
                return
            model, prompt, options = request
            try:
                conn.send(("ok", client.generate(model, prompt, options)))
            except Exception as exc:  # Tr111Error carries the partial CallResult along
                conn.send(("error", exc))


class MeasurementWorker:
    """A child process doing the timed calls of one sweep; started lazily, restarted if it dies.

    ``generate`` has OllamaClient.generate's contract: a CallResult, or a Tr111Error with
    ``partial`` set. A worker that dies mid-call is a TransientError (retried like a drop).
    """

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float,
                 call_timeout_s: float) -> None:
        self.base_url = base_url
        # the keys OllamaClient.timeouts uses
        self.timeouts = {"connect_s": connect_timeout_s, "read_s": read_timeout_s, "call_s": call_timeout_s}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        # spawn: never fork a process whose other threads (Prefect's) may hold locks
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, self.base_url, self.timeouts),
                                    name="tr111-measure", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(60) or parent.recv()[0] != "ready":
            self.close()
            raise TransientError("the measurement worker did not start within 60 s")

    def generate(self, model: str, prompt: str, options: dict | None = None) -> CallResult:
        if self._conn is None:
            self.start()
        conn = self._conn
        try:
            conn.send((model, prompt, options))
            if not conn.poll(self.timeouts["call_s"] + GRACE_S):
                raise TransientError("the measurement worker did not answer in time")
            kind, value = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.close()  # the next call starts a fresh worker
            raise TransientError(f"the measurement worker died mid-call ({type(exc).__name__})") from None
        except TransientError:
            self.close()
            raise
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        conn, process, self._conn, self._process = self._conn, self._process, None, None
        if conn is not None:
            try:
                conn.send(_STOP)
            except (OSError, BrokenPipeError):
                pass
            conn.close()
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)

    def __enter__(self) -> "MeasurementWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
