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

import json
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from tr111.errors import TransientError
from tr111.ollama.client import OllamaClient
from tr111.ollama.metrics import CallResult

GRACE_S = 30.0  # past the whole-call deadline the worker enforces itself, the pipe wait gives up
START_TIMEOUT_S = 60.0
WORKER_NICE = -10  # scheduled ahead of the orchestrator's threads and Prefect's server
_STOP = None


def _serve(conn: Connection, base_url: str, timeouts: dict) -> None:
    """The worker's loop: one call at a time, results (or the error, pickled) back."""
    settle_s = timeouts.get("settle_ms", 0.0) / 1000.0
    with OllamaClient(base_url, connect_timeout_s=timeouts["connect_s"], read_timeout_s=timeouts["read_s"],
                      call_timeout_s=timeouts["call_s"]) as client:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                request = conn.recv()
            except (EOFError, KeyboardInterrupt):
                return
            if request is _STOP:
                return
            model, prompt, options = request
            if settle_s:  # let the orchestrator's task-start burst leave the CPUs first
                time.sleep(settle_s)
            try:
                conn.send(("ok", client.generate(model, prompt, options)))
            except Exception as exc:  # Tr111Error carries the partial CallResult along
                conn.send(("error", exc))


def main(argv: list[str] | None = None) -> int:
    """``python -m tr111.run.worker FD URL TIMEOUTS_JSON``: serve the parent over socket FD."""
    fd, url, timeouts = (argv if argv is not None else sys.argv[1:])
    try:  # ahead of the orchestrator when they wake together (allowed as root or with CAP_SYS_NICE)
        os.nice(WORKER_NICE)
    except OSError:
        pass
    _serve(Connection(int(fd)), url, json.loads(timeouts))
    return 0


class MeasurementWorker:
    """A child process doing the timed calls of one sweep; started lazily, restarted if it dies.

    ``generate`` has OllamaClient.generate's contract: a CallResult, or a Tr111Error with
    ``partial`` set. A worker that dies mid-call is a TransientError (retried like a drop).
    """

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float,
                 call_timeout_s: float, settle_ms: float = 0.0) -> None:
        self.base_url = base_url
        # the keys OllamaClient.timeouts uses
        self.timeouts = {"connect_s": connect_timeout_s, "read_s": read_timeout_s, "call_s": call_timeout_s}
        self.settle_ms = settle_ms  # a pause before each timed call, outside every recorded figure
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """A fresh interpreter (``python -m tr111.run.worker``), not fork or multiprocessing's
        spawn: nothing of the parent (threads, locks, its __main__ module) comes along."""
        parent, child = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tr111.run.worker", str(child.fileno()), self.base_url,
                 json.dumps({**self.timeouts, "settle_ms": self.settle_ms})], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        try:
            ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.close()
            raise TransientError(f"the measurement worker did not start within {START_TIMEOUT_S:g} s")

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
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def __enter__(self) -> "MeasurementWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
