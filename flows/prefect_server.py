"""The temporary Prefect API server a ``tr111 sweep`` starts for itself when none is configured.

Prefect would start one on first use (``SubprocessASGIServer``), but as a child in the
terminal's process group: a Ctrl-C reaches it first, and the flow's last state updates then
retry a dead API for minutes before a 100-line traceback; a SIGTERM to tr111 leaves it running
as a 230 MB orphan. This one is the same server (the same uvicorn command) started in a
session of its own, so a signal to tr111's group does not reach it; it is stopped when the
command ends, however it ends, and on Linux it dies with tr111 even after a kill -9
(``PR_SET_PDEATHSIG``). With ``PREFECT_API_URL`` set (a real server, Prefect Cloud, a test
harness) nothing is started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import httpx

PR_SET_PDEATHSIG = 1
STOP_WAIT_S = 3.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the server is still stopped on every normal or signalled exit


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(port: int) -> list[str]:
    import prefect

    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "error", "--lifespan", "on"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def own_prefect_server(startup_timeout_s: float = 120.0) -> Iterator[subprocess.Popen | None]:
    """Inside the block Prefect talks to a server tr111 started (and stops on exit); yields
    its process, or None when ``PREFECT_API_URL`` already names a server."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    errors = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs
    proc = subprocess.Popen(_command(port), env=env, start_new_session=True,
                            preexec_fn=_die_with_parent, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        _wait_healthy(proc, errors, f"http://127.0.0.1:{port}/api", startup_timeout_s)
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            yield proc
    finally:
        _drain_prefect_clients()  # logs and events still queued go out while the API is up
        stop(proc)
        errors.close()


def _drain_prefect_clients(timeout_s: float = 2.0) -> None:
    """Without this, Prefect's log and event workers retry a stopped API at exit for minutes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout_s)
        except Exception:  # best effort: the server stops next either way
            pass


def _wait_healthy(proc: subprocess.Popen, errors, api_url: str, timeout_s: float) -> None:
    from tr111.errors import ServerUnavailableError

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                errors.seek(0)
                tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
                raise ServerUnavailableError(f"the temporary Prefect server exited with code"
                                             f" {proc.returncode}: {' '.join(tail)}")
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise ServerUnavailableError(f"the temporary Prefect server did not answer within {timeout_s:g} s"
                                 " (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
