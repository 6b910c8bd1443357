"""The timed call runs in a process of its own, where no orchestrator thread competes with it.

Prefect's background threads (event and log shippers, the API client) share the GIL with
whatever thread streams the response, and add about a millisecond to a measured TTFT
(docs/performance.md). guidellm and AIPerf time requests in worker processes apart from
their schedulers; tr111 does the same: one measurement worker per sweep owns the
keep-alive connection and does nothing but the timed streaming call. The Prefect task
sends it (model, prompt, options) over a pipe and gets the CallResult back; retries,
rows and the DAG stay where they were. The worker never touches the warehouse.

CPU pinning (``TR111_PIN_CPUS``, default ``auto``): with two or more CPUs the worker gets
one of its own (the last one the orchestrator may use), and the orchestrator -- every one of
its threads -- and a Prefect API server it started itself (the ephemeral one) move to the
others, so the Prefect work done for each task never runs on the core where the first chunk
is awaited. Affinity is put back as it was when the sweep ends (``close``). ``server_pid``: a
server process tr111 started itself and wants on the worker's core (bench/timer_in_sweep
places its fake Ollama that way); a real server is left where it is.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from tr111 import progress
from tr111.errors import TransientError
from tr111.ollama.client import OllamaClient
from tr111.ollama.metrics import CallResult

GRACE_S = 30.0  # past the whole-call deadline the worker enforces itself, the pipe wait gives up
START_TIMEOUT_S = 60.0
WORKER_NICE = -10  # scheduled ahead of the orchestrator's threads and Prefect's server
PIN_MODES = ("auto", "off")
NOT_STARTED = "not started"
_STOP = None

log = logging.getLogger(__name__)


# --- CPU pinning -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuPinning:
    """``measure``: the worker's CPUs (and a server tr111 started); ``rest``: everything else."""

    measure: frozenset[int]
    rest: frozenset[int]

    def describe(self) -> str:
        return (f"measurement worker on CPU {_cpus(self.measure)}, "
                f"orchestrator and its Prefect server on CPU {_cpus(self.rest)}")


def _cpus(cpus: frozenset[int] | set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def plan_pinning(mode: str | None, available: set[int] | frozenset[int] | None = None) -> CpuPinning | None:
    """The split for ``mode`` (auto/off) over ``available`` (default: the CPUs this process may
    use); None when off, when the platform has no sched_setaffinity, or with fewer than 2 CPUs."""
    mode = (mode or "auto").lower()
    if mode not in PIN_MODES:
        raise ValueError(f"pin_cpus must be one of {', '.join(PIN_MODES)}, not {mode!r}")
    if mode == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return CpuPinning(measure=frozenset(cpus[-1:]), rest=frozenset(cpus[:-1]))


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def pin_process(pid: int, cpus: frozenset[int] | set[int]) -> dict[int, set[int]]:
    """Every thread of ``pid`` onto ``cpus`` (sched_setaffinity is per thread on Linux);
    returns each thread's previous affinity, for ``unpin_process``. Threads that end meanwhile,
    or that may not be moved, are skipped."""
    saved: dict[int, set[int]] = {}
    for tid in _threads(pid):
        try:
            before = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:  # gone, or not ours to move
            continue
        saved[tid] = before
    return saved


def unpin_process(pid: int, saved: dict[int, set[int]]) -> None:
    """Back as ``pin_process`` found it; threads started since get what the process had."""
    default = saved.get(pid) or next(iter(saved.values()), None)
    if default is None:
        return
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, saved.get(tid, default))
        except OSError:
            continue


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state"
    except (OSError, ValueError, IndexError):
        return None


def local_prefect_servers(root: int) -> list[int]:
    """Descendants of ``root`` running Prefect's API server (the ephemeral server Prefect starts
    as a subprocess when no PREFECT_API_URL is set). A server it did not start is not known."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        parent = _parent_of(entry)
        if parent is not None:
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"prefect.server" in cmdline or b"prefect server start" in cmdline:
            found.append(pid)
    return found


class _Pinned:
    """Processes moved by ``MeasurementWorker.start`` and how to put them back."""

    def __init__(self, pinning: CpuPinning, server_pid: int | None) -> None:
        self.pinning = pinning
        me = os.getpid()
        self.prefect = [p for p in local_prefect_servers(me) if p != server_pid]
        self.saved = {me: pin_process(me, pinning.rest)}
        self.saved.update({pid: pin_process(pid, pinning.rest) for pid in self.prefect})
        self.server = None
        if server_pid is not None:
            self.saved[server_pid] = pin_process(server_pid, pinning.measure)
            self.server = server_pid if self.saved[server_pid] else None

    def describe(self) -> str:
        extra = [f"{len(self.prefect)} local Prefect server process(es) with the orchestrator"] if self.prefect else []
        if self.server:
            extra.append(f"server pid {self.server} with the worker")
        return self.pinning.describe() + ("; " + ", ".join(extra) if extra else "")

    def restore(self) -> None:
        for pid, saved in self.saved.items():
            unpin_process(pid, saved)
        self.saved = {}


# --- the worker process ----------------------------------------------------------------------

def _serve(conn: Connection, base_url: str, timeouts: dict) -> None:
    """The worker's loop: one call at a time, results (or the error, pickled) back."""
    settle_s = timeouts.get("settle_ms", 0.0) / 1000.0
    with OllamaClient(base_url, connect_timeout_s=timeouts["connect_s"], read_timeout_s=timeouts["read_s"],
                      call_timeout_s=timeouts["call_s"]) as client:
        gc.collect()
        gc.freeze()  # the imported modules are never scanned again
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
            gc.disable()  # no collection inside the timed call
            try:
                reply = ("ok", client.generate(model, prompt, options))
            except Exception as exc:  # Tr111Error carries the partial CallResult along
                reply = ("error", exc)
            finally:
                gc.enable()
            conn.send(reply)
            gc.collect()  # now, between calls, rather than during the next one


def main(argv: list[str] | None = None) -> int:
    """``python -m tr111.run.worker FD URL TIMEOUTS_JSON``: serve the parent over socket FD."""
    fd, url, timeouts = (argv if argv is not None else sys.argv[1:])
    config = json.loads(timeouts)
    # Ctrl-C reaches the whole process group: the parent abandons the call and closes this worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.get("cpus"):  # before any thread starts: they all inherit it
        try:
            os.sched_setaffinity(0, config["cpus"])
        except (OSError, AttributeError):
            pass
    try:  # ahead of the orchestrator when they wake together (allowed as root or with CAP_SYS_NICE)
        os.nice(WORKER_NICE)
    except OSError:
        pass
    try:
        _serve(Connection(int(fd)), url, config)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the parent went away (interrupted mid-call): nothing left to answer
    return 0


STOP_WAIT_S = 0.5  # the worker answers _STOP within milliseconds unless a call is in flight


class MeasurementWorker:
    """A child process doing the timed calls of one sweep; started lazily, restarted if it dies.

    ``generate`` has OllamaClient.generate's contract: a CallResult, or a Tr111Error with
    ``partial`` set. A worker that dies mid-call is a TransientError (retried like a drop).
    ``pin_cpus``: auto/off (None: ``TR111_PIN_CPUS``, default auto); see the module's doc.
    ``pinning``: what was done, in words, once started (also emitted as progress "cpu_pinning").
    """

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float,
                 call_timeout_s: float, settle_ms: float = 0.0, pin_cpus: str | None = None,
                 server_pid: int | None = None) -> None:
        self.base_url = base_url
        # the keys OllamaClient.timeouts uses
        self.timeouts = {"connect_s": connect_timeout_s, "read_s": read_timeout_s, "call_s": call_timeout_s}
        self.settle_ms = settle_ms  # a pause before each timed call, outside every recorded figure
        self.pin_cpus = (pin_cpus or os.environ.get("TR111_PIN_CPUS") or "auto").lower()
        if self.pin_cpus not in PIN_MODES:  # here, not at the first call
            raise ValueError(f"pin_cpus must be one of {', '.join(PIN_MODES)}, not {self.pin_cpus!r}")
        self.server_pid = server_pid
        self.pinning = NOT_STARTED
        self._planned = False  # pinning is decided once per start..close
        self._pinned: _Pinned | None = None
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _pin(self) -> frozenset[int] | None:
        """Pin once per sweep (a restarted worker keeps the split); the worker's CPUs or None."""
        if not self._planned:
            self._planned = True
            plan = plan_pinning(self.pin_cpus)
            if plan is None:
                self.pinning = ("off: TR111_PIN_CPUS=off" if self.pin_cpus == "off"
                                else "off: fewer than 2 CPUs, or no sched_setaffinity")
            else:
                self._pinned = _Pinned(plan, self.server_pid)
                self.pinning = "on: " + self._pinned.describe()
            log.info("CPU pinning %s", self.pinning)
            progress.emit("cpu_pinning", status=self.pinning)
        return self._pinned.pinning.measure if self._pinned is not None else None

    def start(self) -> None:
        """A fresh interpreter (``python -m tr111.run.worker``), not fork or multiprocessing's
        spawn: nothing of the parent (threads, locks, its __main__ module) comes along."""
        measure = self._pin()
        config = {**self.timeouts, "settle_ms": self.settle_ms}
        if measure:
            config["cpus"] = sorted(measure)
        parent, child = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tr111.run.worker", str(child.fileno()), self.base_url,
                 json.dumps(config)], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        try:
            ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop()
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
            self._stop()  # the next call starts a fresh worker
            raise TransientError(f"the measurement worker died mid-call ({type(exc).__name__})") from None
        except TransientError:
            self._stop()
            raise
        if kind == "error":
            raise value
        return value

    def _stop(self) -> None:
        conn, process, self._conn, self._process = self._conn, self._process, None, None
        if conn is not None:
            try:
                conn.send(_STOP)
            except (OSError, BrokenPipeError):
                pass
            conn.close()
        if process is not None:
            try:  # an idle worker exits at once; one mid-call (an interrupted sweep) is not waited for
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        """Stop the worker and put every pinned process back as it was (the sweep is over)."""
        try:
            self._stop()
        finally:
            pinned, self._pinned, self._planned = self._pinned, None, False
            if pinned is not None:
                pinned.restore()

    def __enter__(self) -> "MeasurementWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
